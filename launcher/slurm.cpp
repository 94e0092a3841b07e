#include "slurm.hpp"

namespace dl {

namespace {

constexpr size_t kMaxHosts = 1u << 20;

// One host pattern without top-level commas: literal text and bracket groups.
bool expand_pattern(const std::string& pat, std::vector<std::string>* out, std::string* error) {
  std::vector<std::string> acc{""};
  size_t i = 0;
  while (i < pat.size()) {
    if (pat[i] == ']') {
      *error = "unexpected ']' in '" + pat + "'";
      return false;
    }
    if (pat[i] != '[') {
      size_t j = pat.find_first_of("[]", i);
      if (j == std::string::npos) j = pat.size();
      for (std::string& a : acc) a += pat.substr(i, j - i);
      i = j;
      continue;
    }
    size_t close = pat.find(']', i);
    if (close == std::string::npos) {
      *error = "unbalanced '[' in '" + pat + "'";
      return false;
    }
    std::string body = pat.substr(i + 1, close - i - 1);
    if (body.find('[') != std::string::npos) {
      *error = "nested '[' in '" + pat + "'";
      return false;
    }
    std::vector<std::string> choices;
    for (const std::string& range : split(body, ',')) {
      size_t dash = range.find('-');
      std::string lo = dash == std::string::npos ? range : range.substr(0, dash);
      std::string hi = dash == std::string::npos ? range : range.substr(dash + 1);
      long long a = 0, b = 0;
      bool digits = !lo.empty() && !hi.empty() &&
                    lo.find_first_not_of("0123456789") == std::string::npos &&
                    hi.find_first_not_of("0123456789") == std::string::npos;
      if (!digits || !parse_int(lo, &a) || !parse_int(hi, &b) || b < a) {
        *error = "bad range '" + range + "' in '" + pat + "'";
        return false;
      }
      if (static_cast<size_t>(b - a) > kMaxHosts) {
        *error = "range '" + range + "' is too large";
        return false;
      }
      size_t width = lo.size();  // zero padding follows the first number, as SLURM does
      for (long long v = a; v <= b; ++v) {
        std::string num = std::to_string(v);
        if (num.size() < width) num.insert(0, width - num.size(), '0');
        choices.push_back(num);
      }
    }
    if (acc.size() * choices.size() > kMaxHosts) {
      *error = "hostlist '" + pat + "' expands to too many hosts";
      return false;
    }
    std::vector<std::string> next;
    next.reserve(acc.size() * choices.size());
    for (const std::string& a : acc)
      for (const std::string& c : choices) next.push_back(a + c);
    acc.swap(next);
    i = close + 1;
  }
  for (std::string& a : acc) out->push_back(a);
  return true;
}

long long env_int(const EnvMap& env, const std::string& key, long long fallback) {
  long long v = 0;
  return parse_int(trim(env_get(env, key)), &v) ? v : fallback;
}

std::string first_set(const EnvMap& env, std::initializer_list<const char*> keys) {
  for (const char* k : keys) {
    std::string v = trim(env_get(env, k));
    if (!v.empty()) return v;
  }
  return "";
}

bool detect_slurm(const EnvMap& env, SchedulerInfo* info, std::string* error) {
  // Only a job step started by srun counts: a batch script also carries SLURM_* variables but runs
  // once, on the first node, with a special step id.
  std::string step = first_set(env, {"SLURM_STEP_ID", "SLURM_STEPID"});
  long long step_id = 0;
  if (step.empty() || !parse_int(step, &step_id) || step_id < 0 || step_id >= 0xFFFFFFF0LL) return true;
  if (!env_has(env, "SLURM_NODEID")) return true;

  long long nnodes = 0;
  parse_int(first_set(env, {"SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"}), &nnodes);
  long long node = env_int(env, "SLURM_NODEID", -1);
  if (nnodes < 1 || node < 0 || node >= nnodes) {
    *error = "SLURM environment is inconsistent (SLURM_NODEID=" + env_get(env, "SLURM_NODEID") +
             ", SLURM_STEP_NUM_NODES/SLURM_NNODES=" + std::to_string(nnodes) + ")";
    return false;
  }
  long long ntasks = 0;
  if (parse_int(first_set(env, {"SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"}), &ntasks) && ntasks != nnodes) {
    *error = "srun started " + std::to_string(ntasks) + " tasks on " + std::to_string(nnodes) +
             " nodes; detlite-launch wants exactly one task per node (srun --ntasks-per-node=1) and "
             "starts the workers itself";
    return false;
  }
  std::string list = first_set(env, {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"});
  if (!list.empty()) {
    std::string err;
    if (!expand_hostlist(list, &info->hosts, &err)) {
      *error = "cannot expand SLURM node list: " + err;
      return false;
    }
    info->master_addr = info->hosts.front();
  }
  info->name = "slurm";
  info->nnodes = static_cast<int>(nnodes);
  info->node_rank = static_cast<int>(node);
  long long job = env_int(env, "SLURM_JOB_ID", env_int(env, "SLURM_JOBID", -1));
  if (job >= 0) {
    info->run_id = std::to_string(job) + "." + std::to_string(step_id);
    // Distinct jobs sharing a node get distinct control ports, below the ephemeral range.
    info->rdzv_port = 20000 + static_cast<int>((job * 16 + step_id) % 9000);
  }
  return true;
}

bool detect_mpi(const EnvMap& env, SchedulerInfo* info, std::string* error) {
  std::string name, size_key, rank_key, local_key;
  if (env_has(env, "OMPI_COMM_WORLD_SIZE")) {
    name = "openmpi";
    size_key = "OMPI_COMM_WORLD_SIZE";
    rank_key = "OMPI_COMM_WORLD_RANK";
    local_key = "OMPI_COMM_WORLD_LOCAL_SIZE";
  } else if (env_has(env, "PMI_SIZE") && env_has(env, "PMI_RANK")) {
    name = "mpich";
    size_key = "PMI_SIZE";
    rank_key = "PMI_RANK";
    local_key = "MPI_LOCALNRANKS";
  } else {
    return true;
  }
  long long size = env_int(env, size_key, -1), rank = env_int(env, rank_key, -1);
  if (size < 1 || rank < 0 || rank >= size) {
    *error = name + " environment is inconsistent (" + size_key + "=" + env_get(env, size_key) + ", " +
             rank_key + "=" + env_get(env, rank_key) + ")";
    return false;
  }
  long long local = env_int(env, local_key, 1);
  if (local != 1) {
    *error = "mpirun started " + std::to_string(local) + " processes on this node; detlite-launch wants "
             "one per node (e.g. mpirun --map-by ppr:1:node) and starts the workers itself";
    return false;
  }
  info->name = name;
  info->nnodes = static_cast<int>(size);
  info->node_rank = static_cast<int>(rank);
  std::string job = first_set(env, {"OMPI_MCA_orte_ess_jobid", "PMIX_NAMESPACE"});
  if (!job.empty()) info->run_id = job;
  return true;
}

}  // namespace

bool expand_hostlist(const std::string& list, std::vector<std::string>* hosts, std::string* error) {
  hosts->clear();
  std::string s = trim(list);
  if (s.empty()) {
    *error = "empty hostlist";
    return false;
  }
  // Split on commas outside brackets.
  std::vector<std::string> items;
  std::string cur;
  int depth = 0;
  for (char c : s) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (depth < 0) {
      *error = "unexpected ']' in '" + s + "'";
      return false;
    }
    if (c == ',' && depth == 0) {
      items.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (depth != 0) {
    *error = "unbalanced '[' in '" + s + "'";
    return false;
  }
  items.push_back(cur);
  for (const std::string& raw : items) {
    std::string item = trim(raw);
    if (item.empty()) {
      *error = "empty host name in '" + s + "'";
      return false;
    }
    if (!expand_pattern(item, hosts, error)) return false;
    if (hosts->size() > kMaxHosts) {
      *error = "hostlist expands to too many hosts";
      return false;
    }
  }
  return true;
}

bool detect_scheduler(const EnvMap& env, SchedulerInfo* info, std::string* error) {
  *info = SchedulerInfo{};
  // mpirun inside a SLURM allocation also inherits SLURM variables; the MPI ones describe the launch.
  if (!detect_mpi(env, info, error)) return false;
  if (!info->name.empty()) return true;
  return detect_slurm(env, info, error);
}

}  // namespace dl
