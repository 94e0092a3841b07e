// Schedulers: SLURM hostlist expansion and detection of SLURM / OpenMPI / MPICH launch environments,
// so that `srun detlite-launch script.py` needs no flags.
#pragma once

#include "util.hpp"

namespace dl {

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

}  // namespace dl
