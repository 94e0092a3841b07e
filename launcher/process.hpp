// Worker processes, started and stopped in one place. spawn_worker starts one: its own session and process group,
// a parent-death signal, its CPU affinity and its stdout/stderr pipes, all set between fork and exec. Teardown
// stops them: the agent's round states (agent.hpp) decide when, Teardown how (its methods below). A guardian
// process forked at start-up does the same if the launcher dies without getting there (SIGKILL, crash).
#pragma once

#include <sys/types.h>

#include "util.hpp"

namespace dl {
struct SpawnResult {
  pid_t pid = -1;         // -1: fork failed (see error)
  int out_fd = -1, err_fd = -1;  // read ends of the worker's stdout / stderr pipes (non-blocking)
  int exec_errno = 0;     // non-zero: the command could not be executed (the child exits 126/127)
  std::string error;
};

// Starts argv (argv[0] searched in env's PATH unless it contains '/') with env, bound to cpus (empty:
// leave affinity alone). Must be called from the thread that lives as long as the workers
// (PR_SET_PDEATHSIG follows the thread that forked).
SpawnResult spawn_worker(const std::vector<std::string>& argv, const EnvMap& env, const std::set<int>& cpus);

class Teardown {
 public:
  // Makes the launcher a subreaper and forks the guardian, which removes temp_dir if the launcher
  // dies. Call before any thread exists.
  bool start(const std::string& temp_dir);
  void watch(pid_t pgid);      // a worker's process group exists
  void exited(pid_t pgid);     // its leader exited: whatever it left in the group goes with it
  void signal_all(int sig);    // to every live worker's process group
  void sweep(double seconds);  // SIGKILL and reap every child but the guardian, repeatedly
  void finish();               // at exit: SIGKILL every group, sweep, stop the guardian, remove the temp directory

 private:
  void tell_guardian(pid_t v);  // see guardian_main in process.cpp
  std::set<pid_t> groups_;
  std::string temp_dir_;
  pid_t guardian_ = -1;
  int guardian_fd_ = -1;
};
}  // namespace dl
