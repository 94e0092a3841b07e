// Command line: torchrun's flag spellings (dashes or underscores, PET_<FLAG> environment fallbacks),
// scheduler defaults, validation, and the --help text. A torchrun flag either does what torchrun's
// does or is refused with a one-line reason; none is accepted and ignored.
#pragma once

#include "affinity.hpp"

namespace dl {
// Schedulers (scheduler.cpp): SLURM hostlist expansion and detection of SLURM / OpenMPI / MPICH
// launch environments, so that `srun detlite-launch script.py` needs no flags.

// Expands a SLURM hostlist ("gpu[01-03,07],cpu5", "r[1-2]-n[01-02]") into host names in SLURM's
// order (the leftmost bracket group varies slowest). Returns false and sets *error on bad syntax.
bool expand_hostlist(const std::string& list, std::vector<std::string>* hosts, std::string* error);

struct SchedulerInfo {
  std::string name;          // "slurm", "openmpi", "mpich" or "" when none was detected
  int nnodes = 0;            // number of launchers (one per node)
  int node_rank = 0;
  std::string master_addr;   // first host of the node list; empty when the scheduler does not say
  std::vector<std::string> hosts;
  std::string run_id;        // job id (+ step) when known
  int rdzv_port = 0;         // a control-plane port derived from the job id (0: use the default)
};

// Returns false with *error set when a scheduler is present but misused (e.g. several launchers per
// node). Leaves info->name empty when no scheduler launched this process.
bool detect_scheduler(const EnvMap& env, SchedulerInfo* info, std::string* error);

constexpr int kExitUsage = 2;        // bad command line or environment
constexpr int kExitRendezvous = 124; // the nodes could not form the job (timeout, mismatch, no port)
constexpr int kExitPeerLost = 125;   // a node disappeared during the run

struct Options {
  int nnodes = 1, nproc_per_node = 1, node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;         // 0: node 0 picks a free port
  std::string rdzv_host;           // control-plane endpoint (node 0 listens there)
  int rdzv_port = 29400;
  std::string run_id = "none";
  std::string local_addr;          // source address for the control connection / node 0's bind
  double rdzv_timeout = 600;       // seconds to wait for every node to join
  int max_restarts = 0;
  double grace_period = 10;        // SIGTERM -> SIGKILL
  double heartbeat_interval = 1, heartbeat_timeout = 15;
  std::string role = "default", log_dir;
  int redirects = 3;               // with --log-dir: streams (bit 1 stdout, bit 2 stderr) kept off the console
  int tee = 0;                     // ... unless teed: also on the console
  std::set<int> local_ranks_filter;  // empty: every local rank on the console
  CpuBind cpu_bind = CpuBind::None;
  bool no_python = false, module = false, dry_run = false;
  std::vector<int> handled_signals;  // forwarded to the workers
  std::string script;
  std::vector<std::string> script_args;
  SchedulerInfo scheduler;
  std::string sysfs_root = "/sys";
  std::vector<std::string> notes;    // warnings from parsing, printed once the run starts
};

// Fills *opt from argv and the environment. Returns -1 when the launcher should run; otherwise the
// exit code, after printing what --help, --version or --expand-hostlist ask for, or the usage error.
int parse_args(const std::vector<std::string>& argv, const EnvMap& env, Options* opt);
}  // namespace dl
