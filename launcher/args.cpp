#include "args.hpp"

#include <algorithm>
#include <cctype>
#include <csignal>
#include <cstdio>
#include <optional>

namespace dl {
namespace {
constexpr const char* kVersion = "0.1.0";

struct Spec {
  const char* name;                  // canonical, with dashes
  const char* metavar;               // nullptr: a flag without a value; "[...]": the value is optional
  const char* help;                  // nullptr: hidden (testing only)
  const char* short_name = nullptr;  // nullptr: none
};

// Every option, in the order of --help (docs/launcher.md has the details).
const Spec kSpecs[] = {
    {"nnodes", "N", "Number of nodes, one launcher each (MIN:MAX only with MIN == MAX). Default 1."},
    {"nproc-per-node", "N|cpu|gpu|auto", "Workers on this node: a number, one per CPU, per GPU, or GPUs "
     "if any else CPUs. Default 1."},
    {"node-rank", "R", "Rank of this node, 0..nnodes-1. Default 0."},
    {"master-addr", "ADDR", "MASTER_ADDR (node 0), also the control-plane host. Default 127.0.0.1."},
    {"master-port", "PORT", "MASTER_PORT, where worker rank 0 hosts the store; 0: a free one. Default 29500."},
    {"rdzv-endpoint", "HOST[:PORT]", "Where node 0's launcher listens for the others. Default MASTER_ADDR:29400."},
    {"rdzv-id", "ID", "Run id shared by all nodes (TORCHELASTIC_RUN_ID). Default 'none'."},
    {"rdzv-timeout", "SECONDS", "How long nodes wait for each other to join. Default 600."},
    {"rdzv-backend", "NAME", "static or c10d, both the built-in rendezvous through node 0; others are refused."},
    {"rdzv-conf", "K=V,...", "join_timeout (or timeout) sets --rdzv-timeout; other keys are refused."},
    {"standalone", nullptr, "One node on a free port (refused with another --nnodes or --master-port)."},
    {"local-addr", "ADDR", "This node's address for the control connection (node 0: to listen on)."},
    {"max-restarts", "K", "Restart the whole job up to K times after a worker failure. Default 0."},
    {"grace-period", "SECONDS", "Between SIGTERM and SIGKILL when stopping workers. Default 10."},
    {"heartbeat-interval", "SECONDS", "Control-plane heartbeat period. Default 1."},
    {"heartbeat-timeout", "SECONDS", "A node silent this long is lost and the job stops. Default 15."},
    {"monitor-interval", "SECONDS", "Refused: worker exits are noticed at once, nothing is polled."},
    {"role", "NAME", "ROLE_NAME for the workers. Default 'default'."},
    {"log-dir", "DIR", "Per-rank logs and error files in DIR/attempt_<k>/rank_<r>/, DIR/summary.json; "
     "output to the files only."},
    {"tee", "[0-3]", "With --log-dir, also on the console: bare or 3 both streams, 1 stdout, 2 stderr.", "t"},
    {"redirects", "0-3", "With --log-dir, streams kept off the console: 3 (default) both, 1 stdout, 2 "
     "stderr, 0 none.", "r"},
    {"local-ranks-filter", "R,...", "Only these local ranks on the console (log files get all)."},
    {"cpu-bind", "MODE", "Worker CPU affinity: none, socket, socket-unique-contiguous, "
     "socket-unique-interleaved, core."},
    {"numa-binding", "MODE", "node/socket, exclusive, core-complex: --cpu-bind socket, "
     "socket-unique-contiguous, core."},
    {"signals-to-handle", "SIG,...", "Forwarded signals. Default SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,"
     "SIGUSR2 (USR1/2 only forwarded)."},
    {"no-python", nullptr, "Run the command as is instead of 'python3 -u script'."},
    {"module", nullptr, "Run the script as a module: 'python3 -u -m module'.", "m"},
    {"run-path", nullptr, "Run the script by path ('python3 -u script'), overriding --no-python and -m."},
    {"dry-run", nullptr, "Print the resolved configuration as JSON and exit."},
    {"expand-hostlist", "LIST", "Print the hosts of a SLURM hostlist, one per line, and exit."},
    {"sysfs-root", "DIR", nullptr},
    {"help", nullptr, "Show this help and exit.", "h"},
    {"version", nullptr, "Print the version and exit."},
};

// The signals --signals-to-handle may name (the default set).
const int kHandled[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

struct UsageError { std::string msg; };

[[noreturn]] void refuse(const std::string& msg) { throw UsageError{msg}; }

[[noreturn]] void expected(const std::string& option, const std::string& what, const std::string& v) {
  refuse("--" + option + " expects " + what + ", got '" + v + "'");
}

// Splits argv into options (canonical name -> value, "" for flags) and the script with its args.
std::map<std::string, std::string> tokenize(const std::vector<std::string>& argv, Options* opt) {
  std::map<std::string, std::string> given;
  size_t i = 1;
  for (; i < argv.size() && argv[i] != "--"; ++i) {
    const std::string& a = argv[i];
    if (a.size() < 2 || a[0] != '-') break;  // the script: everything after belongs to it
    const bool is_long = starts_with(a, "--");
    const size_t eq = is_long ? a.find('=') : std::string::npos;
    const bool has_value = is_long ? eq != std::string::npos : a.size() > 2;
    std::string name = is_long ? a.substr(2, has_value ? eq - 2 : std::string::npos) : a.substr(1, 1);
    std::string value = has_value ? a.substr(is_long ? eq + 1 : 2) : "";
    std::replace(name.begin(), name.end(), '_', '-');
    const Spec* spec = std::find_if(std::begin(kSpecs), std::end(kSpecs), [&](const Spec& s) {
      return is_long ? name == s.name : s.short_name && name == s.short_name;
    });
    if (spec == std::end(kSpecs)) refuse("unknown option '" + a + "' (see --help)");
    const std::string option = "option --" + std::string(spec->name);
    if (!spec->metavar && has_value) refuse(option + " takes no value");
    const bool optional = spec->metavar && spec->metavar[0] == '[';  // then only 0-3 is taken from the next
    const bool next_fits = i + 1 < argv.size() && std::set<std::string>{"0", "1", "2", "3"}.count(argv[i + 1]);
    if (spec->metavar && !has_value && !optional && i + 1 >= argv.size()) refuse(option + " needs a value");
    if (spec->metavar && !has_value && (!optional || next_fits)) value = argv[++i];
    given[spec->name] = value;
  }
  if (i < argv.size() && argv[i] == "--") ++i;
  if (i < argv.size()) {
    opt->script = argv[i];
    opt->script_args.assign(argv.begin() + static_cast<long>(i) + 1, argv.end());
  }
  return given;
}

// Each option's value: from the command line, else from PET_<OPT> (for a flag: when that is 1, true, yes or on).
class Source {
 public:
  Source(std::map<std::string, std::string> given, const EnvMap& env) : given_(std::move(given)) {
    for (const Spec& s : kSpecs) {
      std::string pet = "PET_" + std::string(s.name);
      for (char& c : pet) c = c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      const auto e = env.find(pet);
      const std::string v = e == env.end() ? "" : to_lower(trim(e->second));
      if (e != env.end() && (s.metavar || v == "1" || v == "true" || v == "yes" || v == "on"))
        given_.emplace(s.name, e->second);  // the command line wins
    }
  }

  std::optional<std::string> value(const char* name) const {
    auto it = given_.find(name);
    return it == given_.end() ? std::nullopt : std::optional<std::string>(it->second);
  }
  bool given(const char* name) const { return given_.count(name) != 0; }  // flags too
  void integer(const char* name, long long lo, long long hi, int* out) const {
    const auto v = value(name);
    long long x = 0;
    if (v && (!parse_int(trim(*v), &x) || x < lo || x > hi))
      expected(name, "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", *v);
    if (v) *out = static_cast<int>(x);
  }
  void seconds(const char* name, double lo, double* out) const {
    const auto v = value(name);
    double x = 0;
    if (v && (!parse_double(trim(*v), &x) || !(x >= lo) || x > 1e7)) expected(name, "a number of seconds", *v);
    if (v) *out = x;
  }

 private:
  std::map<std::string, std::string> given_;
};

void parse_world(const Source& src, const EnvMap& env, Options* o) {  // node count, this node's rank, workers here
  std::string err;
  o->sysfs_root = src.value("sysfs-root").value_or(env_get(env, "DETLITE_SYSFS_ROOT", o->sysfs_root));
  if (!detect_scheduler(env, &o->scheduler, &err)) refuse(err);
  const SchedulerInfo& sched = o->scheduler;
  if (!sched.name.empty()) o->nnodes = sched.nnodes;
  if (const auto v = src.value("nnodes")) {
    const std::string s = trim(*v);
    const std::vector<std::string> parts = split(s, ':');  // N or MIN:MAX
    long long lo = 0, hi = 0;
    const bool ok = parts.size() <= 2 && parse_int(parts[0], &lo) && parse_int(parts.back(), &hi);
    if (!ok || lo < 1 || lo > 100000) expected("nnodes", "N or N:N", *v);
    if (hi != lo) refuse("elastic --nnodes " + s + " is not supported: give a fixed node count");
    o->nnodes = static_cast<int>(lo);
  }
  if (src.given("standalone")) {
    // torchrun's --standalone forms its own one-node rendezvous on a free port; a node count or a
    // port next to it cannot both hold, so say so instead of dropping one.
    if (src.given("nnodes") && o->nnodes != 1)
      refuse("--standalone runs a single node: it cannot be combined with --nnodes " + std::to_string(o->nnodes));
    o->nnodes = 1;
  }
  if (!sched.name.empty()) o->node_rank = sched.node_rank;
  src.integer("node-rank", 0, 100000, &o->node_rank);
  if (o->node_rank >= o->nnodes)
    refuse("--node-rank " + std::to_string(o->node_rank) + " is not below --nnodes " + std::to_string(o->nnodes));
  const std::string raw = src.value("nproc-per-node").value_or("1"), nproc = to_lower(trim(raw));
  const bool gpu = nproc == "gpu" || nproc == "cuda" || nproc == "auto";
  const int gpus = gpu ? visible_gpu_count(o->sysfs_root, env) : 0;
  long long n = 0;
  if (gpu && gpus == 0 && nproc != "auto") refuse("--nproc-per-node gpu: no visible NVIDIA GPU");
  if (nproc == "cpu" || (gpu && gpus == 0)) o->nproc_per_node = std::max(1, static_cast<int>(allowed_cpus(env).size()));
  else if (gpu) o->nproc_per_node = gpus;
  else if (parse_int(nproc, &n) && n >= 1 && n <= 100000) o->nproc_per_node = static_cast<int>(n);
  else expected("nproc-per-node", "a positive integer, cpu, gpu or auto", raw);
}

void parse_endpoint(const std::string& v, Options* o) {
  const std::string s = trim(v);
  std::string host = s, port;
  const bool one_colon = std::count(s.begin(), s.end(), ':') == 1;
  if (!s.empty() && s[0] == '[') {  // [v6addr]:port
    const size_t close = s.find(']');
    if (close == std::string::npos) refuse("--rdzv-endpoint: unbalanced '[' in '" + v + "'");
    host = s.substr(1, close - 1);
    if (close + 1 < s.size() && s[close + 1] != ':') expected("rdzv-endpoint", "[HOST]:PORT", v);
    if (close + 1 < s.size()) port = s.substr(close + 2);
  } else if (one_colon) {
    host = s.substr(0, s.find(':'));
    port = s.substr(s.find(':') + 1);
  }
  if (!host.empty()) o->rdzv_host = host;
  if (port.empty() && !(one_colon && s.back() == ':')) return;
  long long p = 0;
  if (!parse_int(port, &p) || p < 1 || p > 65535) expected("rdzv-endpoint", "HOST[:PORT] with a port in 1..65535", v);
  o->rdzv_port = static_cast<int>(p);
}

void parse_rdzv_conf(const std::string& v, Options* o) {
  for (const std::string& raw : split(v, ',')) {
    const std::string kv = trim(raw);
    const size_t eq = kv.find('=');
    if (kv.empty()) continue;
    if (eq == std::string::npos) expected("rdzv-conf", "KEY=VALUE,...", v);
    const std::string key = trim(kv.substr(0, eq));
    double t = 0;
    if (key != "join_timeout" && key != "timeout")
      refuse("--rdzv-conf " + key + " is not supported: only join_timeout (or timeout) applies to a fixed-size "
             "rendezvous");
    if (!parse_double(trim(kv.substr(eq + 1)), &t) || !(t > 0) || t > 1e7)
      expected("rdzv-conf " + key, "a number of seconds", kv.substr(eq + 1));
    o->rdzv_timeout = t;
  }
}

void parse_rendezvous(const Source& src, Options* o) {  // where node 0 is, which ports, how nodes find each other
  const SchedulerInfo& sched = o->scheduler;
  if (const auto v = src.value("master-addr")) o->master_addr = trim(*v);
  else if (!sched.master_addr.empty()) o->master_addr = sched.master_addr;
  if (o->master_addr.empty()) refuse("--master-addr is empty");
  if (sched.master_addr.empty() && !sched.name.empty() && sched.nnodes > 1 && !src.given("master-addr"))
    refuse(sched.name + " does not tell where node 0 runs: pass --master-addr (the host of rank 0)");
  src.integer("master-port", 0, 65535, &o->master_port);
  if (src.given("standalone") && src.given("master-port") && o->master_port != 0)
    refuse("--standalone picks a free MASTER_PORT itself: it cannot be combined with --master-port " +
           std::to_string(o->master_port));
  if (!src.given("master-port") && (!sched.name.empty() || src.given("standalone"))) o->master_port = 0;
  o->rdzv_host = o->master_addr;
  if (sched.rdzv_port > 0) o->rdzv_port = sched.rdzv_port;
  if (const auto v = src.value("rdzv-endpoint")) parse_endpoint(*v, o);
  if (o->nnodes > 1 && o->master_port == o->rdzv_port && o->master_port != 0)
    refuse("--master-port and the control-plane port (--rdzv-endpoint) are both " +
           std::to_string(o->master_port) + "; pick different ports");
  if (const auto v = src.value("rdzv-id")) o->run_id = trim(*v);
  else if (!sched.run_id.empty()) o->run_id = sched.run_id;
  if (o->run_id.empty()) refuse("--rdzv-id is empty");
  if (const auto v = src.value("rdzv-conf")) parse_rdzv_conf(*v, o);
  src.seconds("rdzv-timeout", 0.1, &o->rdzv_timeout);  // after --rdzv-conf: the explicit flag wins
  if (const auto v = src.value("local-addr")) o->local_addr = trim(*v);
  const std::string backend = src.value("rdzv-backend").value_or("static");
  if (to_lower(trim(backend)) != "static" && to_lower(trim(backend)) != "c10d")
    refuse("--rdzv-backend " + backend + " is not supported: detlite-launch has its own rendezvous through node 0 "
           "(use static or c10d)");
}

void parse_supervision(const Source& src, Options* o) {  // restarts, stopping, heartbeats, signals
  src.integer("max-restarts", 0, 1000000, &o->max_restarts);
  src.seconds("grace-period", 0, &o->grace_period);
  src.seconds("heartbeat-interval", 0.01, &o->heartbeat_interval);
  src.seconds("heartbeat-timeout", 0.05, &o->heartbeat_timeout);
  if (o->heartbeat_timeout <= o->heartbeat_interval)
    refuse("--heartbeat-timeout must be longer than --heartbeat-interval");
  if (src.given("monitor-interval"))
    refuse("--monitor-interval is not supported: detlite-launch notices worker exits at once (SIGCHLD) instead "
           "of polling; drop the option");
  const auto v = src.value("signals-to-handle");
  if (!v) return o->handled_signals.assign(std::begin(kHandled), std::end(kHandled));
  for (const std::string& name : split(*v, ',')) {
    const int sig = signal_from_name(name);
    if (std::find(std::begin(kHandled), std::end(kHandled), sig) == std::end(kHandled))
      refuse("--signals-to-handle accepts SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2; got '" + name + "'");
    o->handled_signals.push_back(sig);
  }
}

void parse_output(const Source& src, Options* o) {  // where worker output goes: console, log files, which ranks
  auto stream_bits = [](const char* name, const std::string& v, bool bare_is_3) {
    long long x = 3;
    if (v.find(':') != std::string::npos)
      refuse("per-rank --" + std::string(name) + " maps are not supported: give one value 0-3 for every rank");
    if (!(bare_is_3 && v.empty()) && (!parse_int(trim(v), &x) || x < 0 || x > 3)) expected(name, "0-3", v);
    return static_cast<int>(x);
  };
  o->role = src.value("role").value_or(o->role);
  o->log_dir = src.value("log-dir").value_or(o->log_dir);
  if (const auto v = src.value("tee")) o->tee = stream_bits("tee", *v, true);
  if (const auto v = src.value("redirects")) o->redirects = stream_bits("redirects", *v, false);
  if (o->tee != 0 && o->log_dir.empty())
    o->notes.push_back("--tee has no effect without --log-dir: all output goes to the console");
  if (src.given("redirects") && o->redirects != 0 && o->log_dir.empty())
    refuse("--redirects " + std::to_string(o->redirects) + " needs --log-dir: redirected output goes to "
           "DIR/attempt_<k>/rank_<r>/");
  const auto v = src.value("local-ranks-filter");
  if (!v) return;
  for (const std::string& part : split(*v, ',')) {
    long long r = 0;
    if (!parse_int(trim(part), &r) || r < 0) expected("local-ranks-filter", "R,R,...", *v);
    o->local_ranks_filter.insert(static_cast<int>(r));
  }
}

void parse_binding(const Source& src, Options* o) {
  if (const auto v = src.value("numa-binding")) {
    const std::string m = to_lower(trim(*v));
    if (m == "node" || m == "socket") o->cpu_bind = CpuBind::Socket;
    else if (m == "exclusive") o->cpu_bind = CpuBind::SocketUniqueContiguous;
    else if (m == "core-complex" || m == "core_complex") o->cpu_bind = CpuBind::Core;
    else expected("numa-binding", "node, socket, exclusive or core-complex", *v);
  }
  const auto v = src.value("cpu-bind");
  if (v && !parse_cpu_bind(*v, &o->cpu_bind))
    expected("cpu-bind", "none, socket, socket-unique-contiguous, socket-unique-interleaved or core", *v);
}

void parse_command(const Source& src, Options* o) {
  o->no_python = src.given("no-python");
  o->module = src.given("module");
  o->dry_run = src.given("dry-run");
  if (src.given("run-path")) o->no_python = o->module = false;  // torchrun: --run-path takes precedence
  if (o->no_python && o->module) refuse("--no-python and -m/--module cannot be combined");
  if (o->script.empty()) refuse("missing the training script (or command with --no-python)");
}

std::string help_text() {
  std::string out =
      "usage: detlite-launch [options] script [args...]\n"
      "       detlite-launch [options] --no-python command [args...]\n"
      "\n"
      "Starts --nproc-per-node workers on this node with torchrun's environment (RANK, LOCAL_RANK,\n"
      "WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...; worker rank 0 hosts the store), supervises them and\n"
      "tears everything down on the first failure. For several nodes, run one launcher per node; under\n"
      "srun (one task per node) or mpirun the node count, node rank and node 0 come from the scheduler.\n"
      "Options accept dashes or underscores (--nproc_per_node), '--opt=value', and PET_<OPT> variables.\n"
      "\noptions:\n";
  for (const Spec& s : kSpecs) {
    if (!s.help) continue;
    out += std::string("  ") + (s.short_name ? "-" + std::string(s.short_name) + ", " : "") + "--" + s.name +
           (s.metavar ? " " + std::string(s.metavar) : "");
    size_t col = 100;  // the description, indented by 6 and wrapped at 100 columns: its first word wraps
    for (const std::string& word : split(s.help, ' ')) {
      const bool wrap = col + word.size() + 1 > 100;
      out += (wrap ? "\n      " : " ") + word;
      col = (wrap ? 6 : col + 1) + word.size();
    }
    out += "\n";
  }
  return out +
         "\nexit status:\n"
         "  0    every worker on every node exited 0\n"
         "  N    the root-cause worker's own exit code (128+signal when a signal killed it); every node\n"
         "       exits with the same code\n"
         "  2    usage error (bad option or environment)\n"
         "  124  rendezvous failed: nodes did not all join in time, a node's run id / protocol / world\n"
         "       description did not match, or the control-plane port was taken\n"
         "  125  a node was lost during the run (its launcher died or stopped sending heartbeats)\n"
         "  126/127 the worker command could not be executed / was not found\n"
         "  128+S the launcher itself received signal S (SIGINT, SIGTERM, ...) and stopped the job\n"
         "\nSee docs/launcher.md for the environment set for workers, SLURM/MPI use and torchrun differences.\n";
}
}  // namespace

int parse_args(const std::vector<std::string>& argv, const EnvMap& env, Options* opt) {
  try {
    std::map<std::string, std::string> given = tokenize(argv, opt);
    std::vector<std::string> hosts;
    std::string err;
    const bool help = given.count("help"), version = given.count("version"), expand = given.count("expand-hostlist");
    if (help) std::fputs(help_text().c_str(), stdout);
    else if (version) std::printf("detlite-launch %s\n", kVersion);
    else if (expand && !expand_hostlist(given["expand-hostlist"], &hosts, &err)) {
      std::fprintf(stderr, "detlite-launch: %s\n", err.c_str());
      return kExitUsage;
    }
    for (const std::string& h : hosts) std::printf("%s\n", h.c_str());
    if (help || version || expand) return 0;
    Source src(std::move(given), env);
    parse_world(src, env, opt);
    for (auto group : {parse_rendezvous, parse_supervision, parse_output, parse_binding, parse_command})
      group(src, opt);
    return -1;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "detlite-launch: error: %s\n", e.msg.c_str());
    return kExitUsage;
  }
}
}  // namespace dl
