// Process control: spawning a worker in its own session with a parent-death signal and CPU
// affinity, signalling process groups, sweeping leftover descendants, and the guardian process
// that kills every worker group if the launcher itself is SIGKILLed.
#pragma once

#include <sys/types.h>

#include <set>
#include <string>
#include <vector>

namespace dl {

struct SpawnRequest {
  std::vector<std::string> argv;  // argv[0] is searched in PATH unless it contains '/'
  std::vector<std::string> env;   // "KEY=VALUE"
  std::set<int> cpus;             // empty: leave affinity alone
  std::string path_env;           // PATH used for the search
};

struct SpawnResult {
  pid_t pid = -1;         // -1: fork failed (see error)
  int out_fd = -1;        // read ends of the worker's stdout / stderr pipes (non-blocking)
  int err_fd = -1;
  int exec_errno = 0;     // non-zero: the command could not be executed (the child exits 126/127)
  std::string error;
};

// Must be called from the thread that lives as long as the workers (PR_SET_PDEATHSIG follows the
// thread that forked).
SpawnResult spawn_worker(const SpawnRequest& req);

// kill(-pgid, sig), ignoring a group that is already gone.
void signal_group(pid_t pgid, int sig);

// Direct children of this process other than `keep` (orphans re-parented to us as subreaper).
std::vector<pid_t> list_children(const std::set<pid_t>& keep);

// Makes this process the reaper of orphaned descendants (so escaped grandchildren can be swept).
void become_subreaper();

// Kill and reap every direct child except `keep`, repeatedly (killing one may orphan others to us).
void sweep_children(const std::set<pid_t>& keep, double max_seconds);

// A small forked helper. It holds the read end of a pipe; the launcher tells it which process groups
// exist. When the pipe reaches EOF without a clean "quit" (the launcher died, even by SIGKILL), it
// SIGKILLs every group it knows and removes the launcher's temporary directory.
class Guardian {
 public:
  bool start(const std::string& temp_dir);
  void watch(pid_t pgid);
  void forget(pid_t pgid);
  void quit();  // clean exit: the launcher has cleaned up itself
  pid_t pid() const { return pid_; }

 private:
  void send(const std::string& line);
  pid_t pid_ = -1;
  int fd_ = -1;
};

}  // namespace dl
