#include "args.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <map>

namespace dl {

namespace {

enum class Kind { Flag, Value, OptionalValue };

struct Spec {
  const char* name;   // canonical, with dashes
  const char* short_name;
  Kind kind;
  const char* metavar;
  const char* help;
  bool hidden;
};

// Every flag; the order is the order of --help.
const Spec kSpecs[] = {
    {"nnodes", nullptr, Kind::Value, "N",
     "Number of nodes (one launcher per node). torchrun's MIN:MAX form is accepted only with MIN == MAX. "
     "Default 1, or the scheduler's node count.", false},
    {"nproc-per-node", nullptr, Kind::Value, "N|cpu|gpu|auto",
     "Workers on this node: a number, 'cpu' (one per CPU), 'gpu' (one per visible NVIDIA GPU) or 'auto' "
     "(GPUs when there are any, else CPUs). Default 1.", false},
    {"node-rank", nullptr, Kind::Value, "R", "Rank of this node, 0..nnodes-1. Default 0, or the scheduler's.", false},
    {"master-addr", nullptr, Kind::Value, "ADDR",
     "Address of node 0: MASTER_ADDR for the workers and the default control-plane host. Default 127.0.0.1, "
     "or the first SLURM host.", false},
    {"master-port", nullptr, Kind::Value, "PORT",
     "MASTER_PORT, where worker rank 0 hosts the store. 0 lets node 0 pick a free port. Default 29500 "
     "(0 under SLURM or MPI). Restarts always get a fresh free port.", false},
    {"rdzv-endpoint", nullptr, Kind::Value, "HOST[:PORT]",
     "Where node 0's launcher listens for the other launchers. Default MASTER_ADDR:29400 (under SLURM the "
     "port is derived from the job id).", false},
    {"rdzv-id", nullptr, Kind::Value, "ID",
     "Run id shared by all nodes; a node with another id is refused. TORCHELASTIC_RUN_ID. Default 'none' "
     "(the job id under a scheduler).", false},
    {"rdzv-timeout", nullptr, Kind::Value, "SECONDS", "How long nodes wait for each other to join. Default 600.", false},
    {"rdzv-backend", nullptr, Kind::Value, "NAME", "Accepted for torchrun compatibility and ignored.", false},
    {"rdzv-conf", nullptr, Kind::Value, "K=V,...",
     "torchrun compatibility: 'join_timeout' or 'timeout' sets --rdzv-timeout; other keys are ignored.", false},
    {"standalone", nullptr, Kind::Flag, nullptr, "Single node with a free port: --nnodes 1 --master-port 0.", false},
    {"local-addr", nullptr, Kind::Value, "ADDR",
     "This node's address: the source address of the control connection (node 0: the listening address).", false},
    {"max-restarts", nullptr, Kind::Value, "K",
     "Restart the whole job (all nodes) up to K times after a worker failure. Default 0.", false},
    {"grace-period", nullptr, Kind::Value, "SECONDS",
     "After SIGTERM, how long workers get before SIGKILL. Default 10.", false},
    {"heartbeat-interval", nullptr, Kind::Value, "SECONDS", "Control-plane heartbeat period. Default 1.", false},
    {"heartbeat-timeout", nullptr, Kind::Value, "SECONDS",
     "A node silent this long is declared lost and the job is aborted. Default 15.", false},
    {"monitor-interval", nullptr, Kind::Value, "SECONDS",
     "Accepted for torchrun compatibility and ignored (the launcher is event driven).", false},
    {"role", nullptr, Kind::Value, "NAME", "ROLE_NAME for the workers. Default 'default'.", false},
    {"log-dir", nullptr, Kind::Value, "DIR",
     "Write each rank's stdout/stderr and error file under DIR/attempt_<k>/rank_<r>/ and a JSON summary "
     "(DIR/summary.json on node 0, DIR/summary-node<n>.json elsewhere). Worker output then goes to the "
     "files only, unless --tee.", false},
    {"tee", "t", Kind::OptionalValue, "[0-3]",
     "With --log-dir, also show worker output on the console (bare or 3: both streams, 1: stdout, "
     "2: stderr).", false},
    {"redirects", "r", Kind::Value, "0-3",
     "Accepted for torchrun compatibility: with --log-dir output already goes to files only.", false},
    {"local-ranks-filter", nullptr, Kind::Value, "R,...",
     "Show only these local ranks on the console (log files still get every rank).", false},
    {"cpu-bind", nullptr, Kind::Value, "MODE",
     "CPU affinity for each worker, set before exec: none (default), socket, socket-unique-contiguous, "
     "socket-unique-interleaved, core. The socket is the NUMA node of the rank's GPU (GPU = local rank "
     "modulo visible GPUs, in PCI order) or, without GPUs, ranks are spread evenly over the sockets.", false},
    {"numa-binding", nullptr, Kind::Value, "MODE",
     "torchrun compatibility: node/socket -> --cpu-bind socket, exclusive -> socket-unique-contiguous, "
     "core-complex -> core.", false},
    {"signals-to-handle", nullptr, Kind::Value, "SIG,...",
     "Signals forwarded to the workers. Default SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2. "
     "SIGUSR1/2 are only forwarded; the others also stop the job.", false},
    {"no-python", nullptr, Kind::Flag, nullptr, "Run the command as is instead of 'python3 -u script'.", false},
    {"module", "m", Kind::Flag, nullptr, "Run the script as a module: 'python3 -u -m module'.", false},
    {"run-path", nullptr, Kind::Flag, nullptr, "Accepted for torchrun compatibility (scripts run by path anyway).", false},
    {"dry-run", nullptr, Kind::Flag, nullptr,
     "Print the resolved configuration (nodes, ports, command, CPU sets) as JSON and exit.", false},
    {"expand-hostlist", nullptr, Kind::Value, "LIST",
     "Print the hosts of a SLURM hostlist, one per line, and exit.", false},
    {"sysfs-root", nullptr, Kind::Value, "DIR", "Read CPU/GPU topology from DIR instead of /sys (testing).", true},
    {"help", "h", Kind::Flag, nullptr, "Show this help and exit.", false},
    {"version", nullptr, Kind::Flag, nullptr, "Print the version and exit.", false},
};

const Spec* find_long(const std::string& name) {
  for (const Spec& s : kSpecs)
    if (name == s.name) return &s;
  return nullptr;
}

const Spec* find_short(const std::string& name) {
  for (const Spec& s : kSpecs)
    if (s.short_name && name == s.short_name) return &s;
  return nullptr;
}

std::string pet_name(const std::string& name) {
  std::string out = "PET_";
  for (char c : name) out += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

bool truthy(const std::string& v) {
  std::string s = to_lower(trim(v));
  return s == "1" || s == "true" || s == "yes" || s == "on";
}

int count_cpus() {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

int count_gpus(const Options& opt, const EnvMap& env) {
  Topology topo;
  std::string err;
  if (!read_topology(opt.sysfs_root, &topo, &err)) return 0;
  return static_cast<int>(
      visible_gpus(topo, env_get(env, "CUDA_VISIBLE_DEVICES"), env_has(env, "CUDA_VISIBLE_DEVICES")).size());
}

}  // namespace

ParseResult parse_args(const std::vector<std::string>& argv, const EnvMap& env, Options* opt) {
  ParseResult res;
  std::map<std::string, std::string> given;  // canonical name -> value ("" for flags)
  auto fail = [&](const std::string& msg) {
    res.status = ParseStatus::Error;
    res.error = msg;
    return res;
  };

  size_t i = 1;
  for (; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a.size() < 2 || a[0] != '-') break;  // the script: everything after belongs to it
    std::string name, value;
    bool has_value = false;
    const Spec* spec = nullptr;
    if (starts_with(a, "--")) {
      name = a.substr(2);
      size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      for (char& c : name)
        if (c == '_') c = '-';
      spec = find_long(name);
    } else {
      name = a.substr(1, 1);
      spec = find_short(name);
      if (a.size() > 2) {
        value = a.substr(2);
        has_value = true;
      }
    }
    if (!spec) return fail("unknown option '" + a + "' (see --help)");
    if (spec->kind == Kind::Flag) {
      if (has_value) return fail("option --" + std::string(spec->name) + " takes no value");
    } else if (spec->kind == Kind::Value) {
      if (!has_value) {
        if (i + 1 >= argv.size()) return fail("option --" + std::string(spec->name) + " needs a value");
        value = argv[++i];
      }
    } else if (!has_value && i + 1 < argv.size() && argv[i + 1].size() == 1 && argv[i + 1][0] >= '0' &&
               argv[i + 1][0] <= '3') {
      value = argv[++i];
    }
    given[spec->name] = value;
  }
  if (i < argv.size()) {
    opt->script = argv[i];
    opt->script_args.assign(argv.begin() + static_cast<long>(i) + 1, argv.end());
  }

  if (given.count("help")) {
    res.status = ParseStatus::Help;
    return res;
  }
  if (given.count("version")) {
    res.status = ParseStatus::Version;
    return res;
  }
  if (given.count("expand-hostlist")) {
    res.status = ParseStatus::ExpandHostlist;
    res.hostlist = given["expand-hostlist"];
    return res;
  }

  // Command line first, then PET_<FLAG>; `explicit_` tells which ones the user chose.
  std::set<std::string> explicit_;
  auto value_of = [&](const char* name, std::string* out) {
    auto it = given.find(name);
    if (it != given.end()) {
      *out = it->second;
      explicit_.insert(name);
      return true;
    }
    auto e = env.find(pet_name(name));
    if (e != env.end()) {
      *out = e->second;
      explicit_.insert(name);
      return true;
    }
    return false;
  };
  auto flag_of = [&](const char* name) {
    if (given.count(name)) return true;
    auto e = env.find(pet_name(name));
    return e != env.end() && truthy(e->second);
  };
  std::string v;
  std::string err;
  auto int_opt = [&](const char* name, long long lo, long long hi, int* out) {
    if (!value_of(name, &v)) return true;
    long long x = 0;
    if (!parse_int(trim(v), &x) || x < lo || x > hi) {
      err = "--" + std::string(name) + " expects an integer in [" + std::to_string(lo) + ", " +
            std::to_string(hi) + "], got '" + v + "'";
      return false;
    }
    *out = static_cast<int>(x);
    return true;
  };
  auto seconds_opt = [&](const char* name, double lo, double* out) {
    if (!value_of(name, &v)) return true;
    double x = 0;
    if (!parse_double(trim(v), &x) || !(x >= lo) || x > 1e7) {
      err = "--" + std::string(name) + " expects a number of seconds, got '" + v + "'";
      return false;
    }
    *out = x;
    return true;
  };

  if (value_of("sysfs-root", &v)) opt->sysfs_root = v;
  else if (env_has(env, "DETLITE_SYSFS_ROOT")) opt->sysfs_root = env_get(env, "DETLITE_SYSFS_ROOT");

  if (!detect_scheduler(env, &opt->scheduler, &err)) return fail(err);
  const SchedulerInfo& sched = opt->scheduler;
  const bool standalone = flag_of("standalone");

  if (value_of("nnodes", &v)) {
    std::string s = trim(v);
    size_t colon = s.find(':');
    long long lo = 0, hi = 0;
    bool ok = colon == std::string::npos ? parse_int(s, &lo) && (hi = lo, true)
                                         : parse_int(s.substr(0, colon), &lo) && parse_int(s.substr(colon + 1), &hi);
    if (!ok || lo < 1 || lo > 100000) return fail("--nnodes expects N or N:N, got '" + v + "'");
    if (hi != lo) return fail("elastic --nnodes " + s + " is not supported: give a fixed node count");
    opt->nnodes = static_cast<int>(lo);
  } else if (!sched.name.empty()) {
    opt->nnodes = sched.nnodes;
  }
  if (standalone) opt->nnodes = 1;

  if (!int_opt("node-rank", 0, 100000, &opt->node_rank)) return fail(err);
  if (!explicit_.count("node-rank") && !sched.name.empty()) opt->node_rank = sched.node_rank;
  if (opt->node_rank >= opt->nnodes)
    return fail("--node-rank " + std::to_string(opt->node_rank) + " is not below --nnodes " +
                std::to_string(opt->nnodes));

  if (value_of("nproc-per-node", &v)) {
    std::string s = to_lower(trim(v));
    long long n = 0;
    if (s == "cpu") {
      opt->nproc_per_node = count_cpus();
    } else if (s == "gpu" || s == "cuda") {
      int g = count_gpus(*opt, env);
      if (g == 0) return fail("--nproc-per-node gpu: no visible NVIDIA GPU");
      opt->nproc_per_node = g;
    } else if (s == "auto") {
      int g = count_gpus(*opt, env);
      opt->nproc_per_node = g > 0 ? g : count_cpus();
    } else if (parse_int(s, &n) && n >= 1 && n <= 100000) {
      opt->nproc_per_node = static_cast<int>(n);
    } else {
      return fail("--nproc-per-node expects a positive integer, cpu, gpu or auto, got '" + v + "'");
    }
  }

  if (value_of("master-addr", &v)) opt->master_addr = trim(v);
  else if (!sched.master_addr.empty()) opt->master_addr = sched.master_addr;
  if (opt->master_addr.empty()) return fail("--master-addr is empty");
  if (sched.master_addr.empty() && !sched.name.empty() && sched.nnodes > 1 && !explicit_.count("master-addr"))
    return fail(sched.name + " does not tell where node 0 runs: pass --master-addr (the host of rank 0)");

  if (!int_opt("master-port", 0, 65535, &opt->master_port)) return fail(err);
  if (!explicit_.count("master-port") && (!sched.name.empty() || standalone)) opt->master_port = 0;
  if (standalone) opt->master_port = 0;

  opt->rdzv_host = opt->master_addr;
  if (sched.rdzv_port > 0) opt->rdzv_port = sched.rdzv_port;
  if (value_of("rdzv-endpoint", &v)) {
    std::string s = trim(v), host = s, port;
    if (!s.empty() && s[0] == '[') {  // [v6addr]:port
      size_t close = s.find(']');
      if (close == std::string::npos) return fail("--rdzv-endpoint: unbalanced '[' in '" + v + "'");
      host = s.substr(1, close - 1);
      if (close + 1 < s.size()) {
        if (s[close + 1] != ':') return fail("--rdzv-endpoint expects [HOST]:PORT, got '" + v + "'");
        port = s.substr(close + 2);
      }
    } else if (std::count(s.begin(), s.end(), ':') == 1) {
      host = s.substr(0, s.find(':'));
      port = s.substr(s.find(':') + 1);
    }
    if (!host.empty()) opt->rdzv_host = host;
    if (!port.empty() || (std::count(s.begin(), s.end(), ':') == 1 && s.back() == ':')) {
      long long p = 0;
      if (!parse_int(port, &p) || p < 1 || p > 65535)
        return fail("--rdzv-endpoint expects HOST[:PORT] with a port in 1..65535, got '" + v + "'");
      opt->rdzv_port = static_cast<int>(p);
    }
  }
  if (opt->nnodes > 1 && opt->master_port == opt->rdzv_port && opt->master_port != 0)
    return fail("--master-port and the control-plane port (--rdzv-endpoint) are both " +
                std::to_string(opt->master_port) + "; pick different ports");

  if (value_of("rdzv-id", &v)) opt->run_id = trim(v);
  else if (!sched.run_id.empty()) opt->run_id = sched.run_id;
  if (opt->run_id.empty()) return fail("--rdzv-id is empty");

  if (value_of("rdzv-conf", &v)) {
    for (const std::string& kv : split(v, ',')) {
      size_t eq = kv.find('=');
      if (eq == std::string::npos) continue;
      std::string key = trim(kv.substr(0, eq));
      double t = 0;
      if ((key == "join_timeout" || key == "timeout") && parse_double(trim(kv.substr(eq + 1)), &t) && t > 0)
        opt->rdzv_timeout = t;
    }
  }
  if (!seconds_opt("rdzv-timeout", 0.1, &opt->rdzv_timeout)) return fail(err);
  if (value_of("local-addr", &v)) opt->local_addr = trim(v);
  if (value_of("rdzv-backend", &v) && trim(v) != "static" && trim(v) != "c10d")
    opt->notes.push_back("--rdzv-backend " + v + " is ignored: detlite-launch has its own control plane");

  if (!int_opt("max-restarts", 0, 1000000, &opt->max_restarts)) return fail(err);
  if (!seconds_opt("grace-period", 0, &opt->grace_period)) return fail(err);
  if (!seconds_opt("heartbeat-interval", 0.01, &opt->heartbeat_interval)) return fail(err);
  if (!seconds_opt("heartbeat-timeout", 0.05, &opt->heartbeat_timeout)) return fail(err);
  if (opt->heartbeat_timeout <= opt->heartbeat_interval)
    return fail("--heartbeat-timeout must be longer than --heartbeat-interval");
  double ignored = 0;
  if (!seconds_opt("monitor-interval", 0, &ignored)) return fail(err);

  if (value_of("role", &v)) opt->role = v;
  if (value_of("log-dir", &v)) opt->log_dir = v;
  if (given.count("tee") || env_has(env, pet_name("tee"))) {
    std::string t = given.count("tee") ? given["tee"] : env_get(env, pet_name("tee"));
    long long x = 3;
    if (!t.empty() && (!parse_int(trim(t), &x) || x < 0 || x > 3)) return fail("--tee expects 0-3, got '" + t + "'");
    opt->tee = static_cast<int>(x);
  }
  if (value_of("redirects", &v)) {
    long long x = 0;
    // torchrun also allows per-rank maps ("0:1,1:2"); any value is accepted and has no further effect.
    if (parse_int(trim(v), &x) && (x < 0 || x > 3)) return fail("--redirects expects 0-3, got '" + v + "'");
  }
  if ((opt->tee != 0) && opt->log_dir.empty())
    opt->notes.push_back("--tee has no effect without --log-dir: all output goes to the console");

  if (value_of("local-ranks-filter", &v)) {
    for (const std::string& part : split(v, ',')) {
      long long r = 0;
      if (!parse_int(trim(part), &r) || r < 0) return fail("--local-ranks-filter expects R,R,..., got '" + v + "'");
      opt->local_ranks_filter.insert(static_cast<int>(r));
    }
  }

  if (value_of("numa-binding", &v)) {
    std::string m = to_lower(trim(v));
    if (m == "node" || m == "socket") opt->cpu_bind = CpuBind::Socket;
    else if (m == "exclusive") opt->cpu_bind = CpuBind::SocketUniqueContiguous;
    else if (m == "core-complex" || m == "core_complex") opt->cpu_bind = CpuBind::Core;
    else return fail("--numa-binding expects node, socket, exclusive or core-complex, got '" + v + "'");
  }
  if (value_of("cpu-bind", &v) && !parse_cpu_bind(v, &opt->cpu_bind))
    return fail("--cpu-bind expects none, socket, socket-unique-contiguous, socket-unique-interleaved or core, got '" +
                v + "'");

  opt->handled_signals = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
  if (value_of("signals-to-handle", &v)) {
    opt->handled_signals.clear();
    for (const std::string& name : split(v, ',')) {
      int sig = signal_from_name(name);
      if (sig != SIGTERM && sig != SIGINT && sig != SIGHUP && sig != SIGQUIT && sig != SIGUSR1 && sig != SIGUSR2)
        return fail("--signals-to-handle accepts SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2; got '" + name + "'");
      opt->handled_signals.push_back(sig);
    }
  }

  opt->no_python = flag_of("no-python");
  opt->module = flag_of("module");
  opt->dry_run = flag_of("dry-run");
  if (opt->no_python && opt->module) return fail("--no-python and -m/--module cannot be combined");
  if (opt->script.empty()) return fail("missing the training script (or command with --no-python)");
  return res;
}

std::vector<std::string> worker_command(const Options& opt, const EnvMap& env) {
  std::vector<std::string> cmd;
  if (!opt.no_python) {
    std::string py = env_get(env, "PYTHON_EXEC");
    cmd.push_back(py.empty() ? "python3" : py);
    cmd.push_back("-u");
    if (opt.module) cmd.push_back("-m");
  }
  cmd.push_back(opt.script);
  cmd.insert(cmd.end(), opt.script_args.begin(), opt.script_args.end());
  return cmd;
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
    if (s.hidden) continue;
    std::string head = "  ";
    if (s.short_name) head += "-" + std::string(s.short_name) + ", ";
    head += "--" + std::string(s.name);
    if (s.metavar) head += " " + std::string(s.metavar);
    out += head + "\n";
    // Wrap the description at ~96 columns with an 6-space indent.
    std::string line = "      ";
    for (const std::string& word : split(s.help, ' ')) {
      if (line.size() + word.size() + 1 > 100 && line.size() > 6) {
        out += line + "\n";
        line = "      ";
      }
      if (line.size() > 6) line += ' ';
      line += word;
    }
    out += line + "\n";
  }
  out +=
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
  return out;
}

}  // namespace dl
