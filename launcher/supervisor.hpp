// The per-node agent: starts this node's workers for a round, relays their output, notices the first
// failure, tears the workers down (SIGTERM, grace period, SIGKILL, sweep) and reports every rank's
// fate to the coordinator. It talks to the coordinator only through messages.
#pragma once

#include <poll.h>
#include <sys/types.h>

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "args.hpp"
#include "control.hpp"
#include "output.hpp"
#include "process.hpp"
#include "report.hpp"

namespace dl {

class Agent {
 public:
  struct Setup {
    const Options* opt = nullptr;
    EnvMap env;                            // the launcher's environment (inherited by workers)
    std::vector<std::string> command;      // worker argv
    std::vector<std::set<int>> cpus;       // per local rank, empty: no binding
    std::string files_dir;                 // where attempt_<k>/rank_<r>/ go (log dir or temp dir)
    bool keep_logs = false;                // files_dir is the user's --log-dir
    std::string hostname;
  };
  using Send = std::function<void(const Msg&)>;

  Agent(Setup setup, Console* console, Guardian* guardian, Send to_coordinator);
  ~Agent();

  void handle(const Msg& m);                      // START, ABORT, RESULT from the coordinator
  void on_signal(int sig);
  bool on_child_exit(pid_t pid, int status);      // false: not one of our workers
  void coordinator_lost(const std::string& why);
  void set_connected(bool c) { connected_ = c; }  // whether messages can reach the coordinator
  void finish_now(int code, const std::string& why);

  // Worker pipes to poll (nothing while the console is backed up).
  void add_pollfds(std::vector<pollfd>* fds) const;
  bool has_open_streams() const;
  void on_pollfd(const pollfd& p);
  void tick(double now);
  double next_deadline() const;  // mono time, or a large value

  bool finished() const { return finished_; }
  int exit_code() const { return exit_code_; }
  std::set<pid_t> live_pids() const;
  void kill_all_now();  // last resort at exit

 private:
  struct Worker;
  void start_round(const Msg& m);
  void begin_stop(int sig, const std::string& why);
  void read_stream(Worker& w, bool err);
  void close_stream(Worker& w, bool err);
  void emit_line(Worker& w, bool err, const std::string& line);
  void maybe_finish_round();
  void complete_round();
  void write_node_summary(const std::string& report, int code);

  Setup s_;
  Console* console_;
  Guardian* guardian_;
  Send send_;
  std::vector<std::unique_ptr<Worker>> workers_;
  int round_ = -1;
  int world_size_ = 0;
  bool round_active_ = false;   // workers started and round not yet reported
  bool stopping_ = false;
  bool killed_ = false;
  double stop_deadline_ = 0;
  bool draining_ = false;
  double drain_deadline_ = 0;
  int term_signal_ = 0;         // first terminating signal received by the launcher
  bool connected_ = true;
  bool lost_ = false;
  std::string lost_reason_;
  double lost_time_ = 0;
  bool finished_ = false;
  int exit_code_ = 0;
  std::vector<Fate> last_fates_;
  std::vector<std::string> restarts_;
};

}  // namespace dl
