#include "args.hpp"

namespace dl {
namespace {
constexpr size_t kMaxHosts = 1u << 20;
const std::string kDigits = "0123456789";

// The numbers of one bracket group ("01-03,07"), zero-padded to the width of each range's first number, as SLURM does.
bool expand_ranges(const std::string& body, const std::string& pat, std::vector<std::string>* out, std::string* error) {
  for (const std::string& range : split(body, ',')) {
    const size_t dash = range.find('-');
    const std::string lo = range.substr(0, dash), hi = dash == std::string::npos ? lo : range.substr(dash + 1);
    long long a = 0, b = 0;
    if (lo.empty() || hi.empty() || (lo + hi).find_first_not_of(kDigits) != std::string::npos ||
        !parse_int(lo, &a) || !parse_int(hi, &b) || b < a)
      return fail(error, "bad range '" + range + "' in '" + pat + "'");
    if (static_cast<size_t>(b - a) > kMaxHosts) return fail(error, "range '" + range + "' is too large");
    for (long long v = a; v <= b; ++v) {
      const std::string num = std::to_string(v);
      out->push_back(std::string(lo.size() > num.size() ? lo.size() - num.size() : 0, '0') + num);
    }
  }
  return true;
}

// One host pattern without top-level commas, its brackets balanced (checked by expand_hostlist):
// literal text and bracket groups, the leftmost group varying slowest.
bool expand_pattern(const std::string& pat, std::vector<std::string>* out, std::string* error) {
  std::vector<std::string> acc{""};
  for (size_t i = 0; i < pat.size();) {
    const size_t open = pat.find('[', i), close = pat.find(']', open);
    for (std::string& a : acc) a += pat.substr(i, open - i);
    if (open == std::string::npos) break;
    const std::string body = pat.substr(open + 1, close - open - 1);
    if (body.find('[') != std::string::npos) return fail(error, "nested '[' in '" + pat + "'");
    std::vector<std::string> choices, next;
    if (!expand_ranges(body, pat, &choices, error)) return false;
    if (acc.size() * choices.size() > kMaxHosts) return fail(error, "hostlist '" + pat + "' expands to too many hosts");
    for (const std::string& a : acc)
      for (const std::string& c : choices) next.push_back(a + c);
    acc.swap(next);
    i = close + 1;
  }
  out->insert(out->end(), acc.begin(), acc.end());
  return true;
}

long long env_int(const EnvMap& env, const std::string& key, long long fallback) {
  long long v = 0;
  return parse_int(trim(env_get(env, key)), &v) ? v : fallback;
}

std::string first_set(const EnvMap& env, std::initializer_list<const char*> keys) {
  for (const char* k : keys)
    if (!trim(env_get(env, k)).empty()) return trim(env_get(env, k));
  return "";
}

bool detect_slurm(const EnvMap& env, SchedulerInfo* info, std::string* error) {
  // Only a job step started by srun counts: a batch script also carries SLURM_* variables but runs
  // once, on the first node, with a special step id.
  long long step = 0, nnodes = 0, ntasks = 0;
  if (!parse_int(first_set(env, {"SLURM_STEP_ID", "SLURM_STEPID"}), &step) || step < 0 || step >= 0xFFFFFFF0LL ||
      !env.count("SLURM_NODEID"))
    return true;
  parse_int(first_set(env, {"SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"}), &nnodes);
  const long long node = env_int(env, "SLURM_NODEID", -1);
  if (nnodes < 1 || node < 0 || node >= nnodes)
    return fail(error, "SLURM environment is inconsistent (SLURM_NODEID=" + env_get(env, "SLURM_NODEID") +
                           ", SLURM_STEP_NUM_NODES/SLURM_NNODES=" + std::to_string(nnodes) + ")");
  if (parse_int(first_set(env, {"SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"}), &ntasks) && ntasks != nnodes)
    return fail(error, "srun started " + std::to_string(ntasks) + " tasks on " + std::to_string(nnodes) +
                           " nodes; detlite-launch wants exactly one task per node (srun --ntasks-per-node=1) "
                           "and starts the workers itself");
  const std::string list = first_set(env, {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"});
  std::string err;
  if (!list.empty() && !expand_hostlist(list, &info->hosts, &err))
    return fail(error, "cannot expand SLURM node list: " + err);
  if (!list.empty()) info->master_addr = info->hosts.front();
  info->name = "slurm";
  info->nnodes = static_cast<int>(nnodes);
  info->node_rank = static_cast<int>(node);
  const long long job = env_int(env, "SLURM_JOB_ID", env_int(env, "SLURM_JOBID", -1));
  if (job >= 0) {
    info->run_id = std::to_string(job) + "." + std::to_string(step);
    // Distinct jobs sharing a node get distinct control ports, below the ephemeral range.
    info->rdzv_port = 20000 + static_cast<int>((job * 16 + step) % 9000);
  }
  return true;
}
}  // namespace

bool expand_hostlist(const std::string& list, std::vector<std::string>* hosts, std::string* error) {
  hosts->clear();
  const std::string s = trim(list);
  if (s.empty()) return fail(error, "empty hostlist");
  std::vector<std::string> items(1);  // split on commas outside brackets
  int depth = 0;
  for (char c : s) {
    depth += c == '[' ? 1 : c == ']' ? -1 : 0;
    if (depth < 0) return fail(error, "unexpected ']' in '" + s + "'");
    if (c == ',' && depth == 0) items.emplace_back();
    else items.back() += c;
  }
  if (depth != 0) return fail(error, "unbalanced '[' in '" + s + "'");
  for (const std::string& raw : items) {
    if (trim(raw).empty()) return fail(error, "empty host name in '" + s + "'");
    if (!expand_pattern(trim(raw), hosts, error)) return false;
    if (hosts->size() > kMaxHosts) return fail(error, "hostlist expands to too many hosts");
  }
  return true;
}

bool detect_scheduler(const EnvMap& env, SchedulerInfo* info, std::string* error) {
  *info = SchedulerInfo{};
  // mpirun inside a SLURM allocation also inherits SLURM variables; the MPI ones describe the launch.
  const bool ompi = env.count("OMPI_COMM_WORLD_SIZE");
  if (!ompi && !(env.count("PMI_SIZE") && env.count("PMI_RANK"))) return detect_slurm(env, info, error);
  const std::string name = ompi ? "openmpi" : "mpich", size_key = ompi ? "OMPI_COMM_WORLD_SIZE" : "PMI_SIZE",
                    rank_key = ompi ? "OMPI_COMM_WORLD_RANK" : "PMI_RANK";
  const long long size = env_int(env, size_key, -1), rank = env_int(env, rank_key, -1);
  const long long local = env_int(env, ompi ? "OMPI_COMM_WORLD_LOCAL_SIZE" : "MPI_LOCALNRANKS", 1);
  if (size < 1 || rank < 0 || rank >= size)
    return fail(error, name + " environment is inconsistent (" + size_key + "=" + env_get(env, size_key) + ", " +
                           rank_key + "=" + env_get(env, rank_key) + ")");
  if (local != 1)
    return fail(error, "mpirun started " + std::to_string(local) + " processes on this node; detlite-launch "
                           "wants one per node (e.g. mpirun --map-by ppr:1:node) and starts the workers itself");
  info->name = name;
  info->nnodes = static_cast<int>(size);
  info->node_rank = static_cast<int>(rank);
  info->run_id = first_set(env, {"OMPI_MCA_orte_ess_jobid", "PMIX_NAMESPACE"});
  return true;
}
}  // namespace dl
