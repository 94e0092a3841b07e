// The per-node agent: starts this node's workers for a round, relays their output, notices the first
// failure, stops the workers and reports every rank's fate to the coordinator, with messages as its
// only link to it. Shaped like torchrun's agent: one AgentState, moved only by the transitions
// tabled in docs/launcher.md ("Inside the launcher"), and one way to stop workers (stop()).
#pragma once

#include <functional>
#include <memory>

#include "util.hpp"
#include "process.hpp"
#include "report.hpp"

namespace dl {
// The worker command line: python3 -u [-m] script args, or the command as is with --no-python.
std::vector<std::string> worker_command(const Options& opt, const EnvMap& env);

enum class AgentState { Waiting, Running, Stopping, Killing, Draining, Finished };

class Agent : public Pollable {
 public:
  using Send = std::function<void(const Msg&)>;
  // Worker files go to files_dir/attempt_<k>/rank_<r>/ (the --log-dir, or a temporary directory).
  Agent(const Options* opt, const EnvMap& env, std::string files_dir, std::string hostname, Console* console,
        Teardown* teardown, Send to_coordinator);
  ~Agent() override;

  void handle(const Msg& m);                  // START, ABORT, RESULT from the coordinator
  void on_signal(int sig);
  void on_child_exit(pid_t pid, int status);  // ignores pids that are not our workers
  void coordinator_joined() { link_ = Link::Joined; }
  void coordinator_lost(const std::string& why);
  void finish_now(int code, const std::string& why);

  // Worker pipes to poll (none while the console is backed up: back-pressure on the workers).
  void add_pollfds(std::vector<pollfd>* fds) override;
  void on_poll(const pollfd* fds, size_t n) override;
  void tick(double now) override;
  double next_deadline(double now) const override;

  bool finished() const { return state_ == AgentState::Finished; }
  int exit_code() const { return exit_code_; }

 private:
  // Whether messages reach the coordinator: always on node 0; elsewhere from node 0's welcome until the link is lost.
  enum class Link { Joining, Joined, Lost };
  struct Worker;

  bool in_round() const { return state_ != AgentState::Waiting && state_ != AgentState::Finished; }
  int alive() const;
  void start_round(const Msg& m);
  bool spawn(int local_rank, int rank, const EnvMap& base);
  void stop(int sig);
  void kill_now();
  void emit_line(Worker& w, int i, const std::string& line);
  void read_stream(Worker& w, int i);
  void close_stream(Worker& w, int i);
  void after_exit();
  void complete_round();
  void finish(int code, const std::string& what);

  const Options& o_;
  const EnvMap& env_;               // the launcher's environment (inherited by workers)
  const std::string files_dir_, hostname_;
  const std::vector<std::string> command_;
  std::vector<std::set<int>> cpus_;  // per local rank, empty: no binding
  int cpus_per_rank_;               // without binding: this launcher's CPUs / workers
  Console* console_;
  Teardown* teardown_;
  Send send_;
  AgentState state_ = AgentState::Waiting;
  Link link_;
  std::vector<std::unique_ptr<Worker>> workers_;
  double deadline_ = 0;         // Stopping: SIGKILL; Draining: stop waiting for the pipes
  int term_signal_ = 0;         // first terminating signal received by the launcher
  RootCause lost_;              // Link::Lost: why, when (wall clock), and this node's exit code for it
  int exit_code_ = 0;
  RunLog log_;
};
}  // namespace dl
