// Command line: torchrun's flag spellings (dashes or underscores, PET_<FLAG> environment fallbacks),
// scheduler defaults, validation, and the --help text.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "affinity.hpp"
#include "slurm.hpp"
#include "util.hpp"

namespace dl {

constexpr const char* kVersion = "0.1.0";
constexpr int kExitUsage = 2;        // bad command line or environment
constexpr int kExitRendezvous = 124; // the nodes could not form the job (timeout, mismatch, no port)
constexpr int kExitPeerLost = 125;   // a node disappeared during the run

struct Options {
  int nnodes = 1;
  int nproc_per_node = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;         // 0: node 0 picks a free port
  std::string rdzv_host;           // control-plane endpoint (node 0 listens there)
  int rdzv_port = 29400;
  std::string run_id = "none";
  std::string local_addr;          // source address for the control connection / node 0's bind
  double rdzv_timeout = 600;       // seconds to wait for every node to join
  int max_restarts = 0;
  double grace_period = 10;        // SIGTERM -> SIGKILL
  double heartbeat_interval = 1;
  double heartbeat_timeout = 15;
  std::string role = "default";
  std::string log_dir;
  int tee = 0;                     // bit 1: stdout, bit 2: stderr also on the console with --log-dir
  std::set<int> local_ranks_filter;  // empty: every local rank on the console
  CpuBind cpu_bind = CpuBind::None;
  bool no_python = false;
  bool module = false;
  bool dry_run = false;
  std::vector<int> handled_signals;  // forwarded to the workers
  std::string script;
  std::vector<std::string> script_args;
  SchedulerInfo scheduler;
  std::string sysfs_root = "/sys";
  std::vector<std::string> notes;    // warnings from parsing, printed once the run starts
};

enum class ParseStatus { Ok, Help, Version, ExpandHostlist, Error };

struct ParseResult {
  ParseStatus status = ParseStatus::Ok;
  std::string error;      // for Error
  std::string hostlist;   // for ExpandHostlist
};

ParseResult parse_args(const std::vector<std::string>& argv, const EnvMap& env, Options* opt);
std::string help_text();

// The worker command line: python3 -u [-m] script args, or the command as is with --no-python.
std::vector<std::string> worker_command(const Options& opt, const EnvMap& env);

}  // namespace dl
