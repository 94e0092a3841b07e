#include "supervisor.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>

namespace dl {

struct Agent::Worker {
  int local_rank = 0;
  int rank = 0;
  pid_t pid = -1;
  bool alive = false;
  int fd[2] = {-1, -1};      // stdout, stderr pipes
  int log_fd[2] = {-1, -1};  // stdout.log, stderr.log
  bool to_console[2] = {true, true};
  LineSplitter split[2];
  std::string prefix;
  std::string error_file;
  Tail tail;
  Fate fate;
  double start_mono = 0;
};

namespace {

constexpr size_t kReadChunk = 64 * 1024;
constexpr size_t kReadBudget = 1 << 20;   // per stream per poll round, for fairness
constexpr size_t kConsoleHighWater = 8u << 20;

int allowed_cpu_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

std::string join_signals(const std::vector<int>& sigs) {
  std::string s;
  for (int sig : sigs) s += (s.empty() ? "" : ",") + signal_name(sig);
  return s;
}

void write_raw(int fd, const char* data, size_t len) {
  while (len > 0) {
    ssize_t n = ::write(fd, data, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    data += n;
    len -= static_cast<size_t>(n);
  }
}

bool is_terminating(int sig) { return sig != SIGUSR1 && sig != SIGUSR2; }

}  // namespace

Agent::Agent(Setup setup, Console* console, Guardian* guardian, Send to_coordinator)
    : s_(std::move(setup)), console_(console), guardian_(guardian), send_(std::move(to_coordinator)) {}

Agent::~Agent() {
  for (auto& w : workers_)
    for (int i = 0; i < 2; ++i) {
      if (w->fd[i] >= 0) close(w->fd[i]);
      if (w->log_fd[i] >= 0) close(w->log_fd[i]);
    }
}

void Agent::handle(const Msg& m) {
  if (m.type == "START") {
    if (round_active_ || finished_) return;
    if (term_signal_ || lost_) {
      // Shutting down: answer the round without starting anything so the coordinator can finish.
      round_ = static_cast<int>(m.get_int("round"));
      for (int lr = 0; lr < s_.opt->nproc_per_node; ++lr) {
        Fate f;
        f.rank = static_cast<int>(m.get_int("offset")) + lr;
        f.local_rank = lr;
        f.node = s_.opt->node_rank;
        f.round = round_;
        f.host = s_.hostname;
        send_(f.to_msg());
      }
      send_(Msg("DONE").set("round", round_));
      return;
    }
    start_round(m);
  } else if (m.type == "ABORT") {
    if (round_active_ && m.get_int("round", -1) == round_ && !stopping_) {
      log_line("stopping this node's workers: " + m.get("reason", "another node failed"));
      begin_stop(SIGTERM, m.get("reason"));
      maybe_finish_round();
    }
  } else if (m.type == "RESULT") {
    if (finished_) return;
    exit_code_ = static_cast<int>(m.get_int("code", 1));
    std::string report = m.get("report");
    const int root_node = static_cast<int>(m.get_int("root_node", -1));
    if (exit_code_ != 0) {
      if (s_.opt->node_rank == 0 || root_node == s_.opt->node_rank || root_node < 0) {
        for (const std::string& l : split(report, '\n'))
          if (!l.empty()) log_line(l);
      } else {
        log_line("job failed, exit code " + std::to_string(exit_code_) + ": " + m.get("root_what") +
                 " (full report on node " + std::to_string(root_node < 0 ? 0 : root_node) + ")");
      }
    }
    if (s_.opt->node_rank != 0) write_node_summary(m.get("root_what"), exit_code_);
    finished_ = true;
  }
}

void Agent::start_round(const Msg& m) {
  const Options& o = *s_.opt;
  round_ = static_cast<int>(m.get_int("round"));
  world_size_ = static_cast<int>(m.get_int("world"));
  const int offset = static_cast<int>(m.get_int("offset"));
  if (round_ > 0) {
    std::string why = m.get("reason");
    restarts_.push_back("round " + std::to_string(round_ - 1) + ": " + why);
    log_line("restart " + std::to_string(round_) + "/" + std::to_string(o.max_restarts) + " (" + why +
             "), MASTER_PORT " + m.get("port"));
  }
  for (auto& w : workers_)
    for (int i = 0; i < 2; ++i) {
      if (w->fd[i] >= 0) close(w->fd[i]);
      if (w->log_fd[i] >= 0) close(w->log_fd[i]);
    }
  workers_.clear();
  round_active_ = true;
  stopping_ = killed_ = draining_ = false;

  EnvMap base = s_.env;
  const int nproc = o.nproc_per_node;
  base["WORLD_SIZE"] = std::to_string(world_size_);
  base["LOCAL_WORLD_SIZE"] = std::to_string(nproc);
  base["GROUP_RANK"] = std::to_string(o.node_rank);
  base["GROUP_WORLD_SIZE"] = m.get("nnodes");
  base["ROLE_NAME"] = o.role;
  base["ROLE_WORLD_SIZE"] = std::to_string(world_size_);
  base["MASTER_ADDR"] = m.get("addr", o.master_addr);
  base["MASTER_PORT"] = m.get("port");
  base["TORCHELASTIC_RESTART_COUNT"] = std::to_string(round_);
  base["TORCHELASTIC_MAX_RESTARTS"] = std::to_string(o.max_restarts);
  base["TORCHELASTIC_RUN_ID"] = o.run_id;
  base["TORCHELASTIC_USE_AGENT_STORE"] = "False";
  base["TORCHELASTIC_SIGNALS_TO_HANDLE"] = join_signals(o.handled_signals);
  if (!env_has(base, "TORCH_NCCL_ASYNC_ERROR_HANDLING")) base["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1";
  const bool set_omp = !env_has(s_.env, "OMP_NUM_THREADS") && nproc > 1;
  const int cpus_per_rank = std::max(1, allowed_cpu_count() / nproc);

  bool spawn_failed = false;
  for (int lr = 0; lr < nproc; ++lr) {
    auto w = std::make_unique<Worker>();
    w->local_rank = lr;
    w->rank = offset + lr;
    w->prefix = "[rank" + std::to_string(w->rank) + "]: ";
    const bool shown = o.local_ranks_filter.empty() || o.local_ranks_filter.count(lr);
    w->to_console[0] = shown && (o.log_dir.empty() || (o.tee & 1));
    w->to_console[1] = shown && (o.log_dir.empty() || (o.tee & 2));
    const std::set<int>& cpus = s_.cpus.size() > static_cast<size_t>(lr) ? s_.cpus[lr] : std::set<int>{};

    std::string dir = s_.files_dir + "/attempt_" + std::to_string(round_) + "/rank_" + std::to_string(w->rank);
    make_dirs(dir);
    w->error_file = dir + "/error.json";
    unlink(w->error_file.c_str());
    if (s_.keep_logs) {
      w->log_fd[0] = open((dir + "/stdout.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      w->log_fd[1] = open((dir + "/stderr.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    }

    EnvMap env = base;
    env["RANK"] = std::to_string(w->rank);
    env["LOCAL_RANK"] = std::to_string(lr);
    env["ROLE_RANK"] = std::to_string(w->rank);
    env["TORCHELASTIC_ERROR_FILE"] = w->error_file;
    if (set_omp) env["OMP_NUM_THREADS"] = std::to_string(cpus.empty() ? cpus_per_rank : static_cast<int>(cpus.size()));

    SpawnRequest req;
    req.argv = s_.command;
    req.cpus = cpus;
    req.path_env = env_get(env, "PATH");
    for (const auto& kv : env) req.env.push_back(kv.first + "=" + kv.second);

    w->fate.rank = w->rank;
    w->fate.local_rank = lr;
    w->fate.node = o.node_rank;
    w->fate.round = round_;
    w->fate.host = s_.hostname;
    w->start_mono = mono_now();
    SpawnResult r = spawn_worker(req);
    if (r.pid < 0) {
      w->fate.state = "failed";
      w->fate.exit_code = 1;
      w->fate.error = "cannot start worker: " + r.error;
      w->fate.t_exit = wall_now();
      spawn_failed = true;
    } else {
      w->pid = r.pid;
      w->alive = true;
      w->fate.pid = r.pid;
      w->fate.state = "running";
      w->fd[0] = r.out_fd;
      w->fd[1] = r.err_fd;
      guardian_->watch(r.pid);
      if (r.exec_errno)
        w->fate.error = "cannot execute '" + s_.command[0] + "': " + errno_text(r.exec_errno);
    }
    workers_.push_back(std::move(w));
  }
  if (spawn_failed) {
    send_(Msg("FAIL").set("round", round_).set("what", "a worker could not be started"));
    begin_stop(SIGTERM, "a worker could not be started");
    maybe_finish_round();
  }
}

void Agent::begin_stop(int sig, const std::string& /*why*/) {
  if (stopping_) return;
  stopping_ = true;
  stop_deadline_ = mono_now() + s_.opt->grace_period;
  for (auto& w : workers_)
    if (w->alive) signal_group(w->pid, s_.opt->grace_period > 0 ? sig : SIGKILL);
  if (s_.opt->grace_period <= 0) killed_ = true;
}

void Agent::emit_line(Worker& w, bool err, const std::string& line) {
  w.tail.add(line);
  if (w.to_console[err ? 1 : 0]) console_->write(err ? 2 : 1, w.prefix + line + "\n");
}

void Agent::read_stream(Worker& w, bool err) {
  const int i = err ? 1 : 0;
  char buf[kReadChunk];
  size_t budget = kReadBudget;
  while (w.fd[i] >= 0 && budget > 0) {
    ssize_t n = read(w.fd[i], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {
      close_stream(w, err);
      return;
    }
    if (w.log_fd[i] >= 0) write_raw(w.log_fd[i], buf, static_cast<size_t>(n));
    w.split[i].feed(buf, static_cast<size_t>(n), [&](const std::string& line) { emit_line(w, err, line); });
    budget -= std::min(budget, static_cast<size_t>(n));
  }
}

void Agent::close_stream(Worker& w, bool err) {
  const int i = err ? 1 : 0;
  if (w.fd[i] < 0) return;
  w.split[i].finish([&](const std::string& line) { emit_line(w, err, line); });
  close(w.fd[i]);
  w.fd[i] = -1;
}

void Agent::add_pollfds(std::vector<pollfd>* fds) const {
  if (console_->pending() > kConsoleHighWater) return;  // back-pressure: let the console catch up
  for (const auto& w : workers_)
    for (int i = 0; i < 2; ++i)
      if (w->fd[i] >= 0) fds->push_back(pollfd{w->fd[i], POLLIN, 0});
}

bool Agent::has_open_streams() const {
  for (const auto& w : workers_)
    if (w->fd[0] >= 0 || w->fd[1] >= 0) return true;
  return false;
}

void Agent::on_pollfd(const pollfd& p) {
  for (auto& w : workers_)
    for (int i = 0; i < 2; ++i)
      if (w->fd[i] == p.fd && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
        read_stream(*w, i == 1);
        if (draining_) maybe_finish_round();
        return;
      }
}

bool Agent::on_child_exit(pid_t pid, int status) {
  Worker* w = nullptr;
  for (auto& x : workers_)
    if (x->alive && x->pid == pid) w = x.get();
  if (!w) return false;
  w->alive = false;
  Fate& f = w->fate;
  f.t_exit = wall_now();
  f.duration = mono_now() - w->start_mono;
  if (WIFSIGNALED(status)) f.signal = WTERMSIG(status);
  else f.exit_code = WEXITSTATUS(status);
  // Whatever the worker left in its process group goes with it.
  signal_group(pid, SIGKILL);
  guardian_->forget(pid);
  read_stream(*w, false);
  read_stream(*w, true);

  if (f.signal == 0 && f.exit_code == 0) {
    f.state = "succeeded";
  } else if (stopping_ || lost_) {
    f.state = "terminated";
  } else {
    f.state = "failed";
    std::string text;
    if (read_text_file(w->error_file, &text)) {
      std::string msg = error_file_message(text);
      if (!msg.empty()) f.error += (f.error.empty() ? "" : "\n") + msg;
    }
    send_(Msg("FAIL").set("round", round_).set("rank", w->rank).set("code", f.code()).set(
        "what", "rank " + std::to_string(w->rank) + " on node " + std::to_string(s_.opt->node_rank) + " " + f.how()));
    log_line("rank " + std::to_string(w->rank) + " (pid " + std::to_string(pid) + ") " + f.how() +
             "; stopping the other workers");
    begin_stop(SIGTERM, "rank failed");
  }
  maybe_finish_round();
  return true;
}

void Agent::maybe_finish_round() {
  if (!round_active_) return;
  for (const auto& w : workers_)
    if (w->alive) return;
  if (!draining_) {
    // Every worker is gone: kill escaped descendants (re-parented to us), then give the pipes a
    // moment to deliver their last bytes.
    std::set<pid_t> keep;
    if (guardian_->pid() > 0) keep.insert(guardian_->pid());
    sweep_children(keep, 1.0);
    draining_ = true;
    drain_deadline_ = mono_now() + 1.0;
    for (auto& w : workers_) {
      read_stream(*w, false);
      read_stream(*w, true);
    }
  }
  for (const auto& w : workers_)
    if (w->fd[0] >= 0 || w->fd[1] >= 0) return;
  complete_round();
}

void Agent::complete_round() {
  for (auto& w : workers_) {
    read_stream(*w, false);  // whatever is still buffered in the pipes
    read_stream(*w, true);
    close_stream(*w, false);
    close_stream(*w, true);
    for (int i = 0; i < 2; ++i)
      if (w->log_fd[i] >= 0) {
        close(w->log_fd[i]);
        w->log_fd[i] = -1;
      }
  }
  draining_ = false;
  round_active_ = false;
  stopping_ = killed_ = false;
  last_fates_.clear();
  for (auto& w : workers_) {
    w->fate.tail = w->tail.text();
    last_fates_.push_back(w->fate);
  }
  if (lost_) {
    // No coordinator to decide: the earliest local failure before the loss, else the loss itself.
    const Fate* first = nullptr;
    for (const Fate& f : last_fates_)
      if (f.state == "failed" && f.t_exit <= lost_time_ && (!first || f.t_exit < first->t_exit)) first = &f;
    int code = first ? first->code() : (term_signal_ ? 128 + term_signal_ : kExitPeerLost);
    std::string what = first ? "rank " + std::to_string(first->rank) + " " + first->how() : lost_reason_;
    RootCause root;
    root.kind = first ? "worker" : "lost";
    root.code = code;
    root.what = what;
    if (first) root.fate = *first;
    for (const std::string& l : split(format_report(root, last_fates_, code), '\n'))
      if (!l.empty()) log_line(l);
    write_node_summary(what, code);
    finished_ = true;
    exit_code_ = code;
    return;
  }
  for (const Fate& f : last_fates_) send_(f.to_msg());
  send_(Msg("DONE").set("round", round_));
}

void Agent::write_node_summary(const std::string& what, int code) {
  if (!s_.keep_logs || s_.opt->node_rank == 0) return;
  Summary sum;
  sum.run_id = s_.opt->run_id;
  sum.exit_code = code;
  sum.nnodes = s_.opt->nnodes;
  sum.node_rank = s_.opt->node_rank;
  sum.world_size = world_size_;
  sum.rounds = round_ + 1;
  sum.max_restarts = s_.opt->max_restarts;
  if (code != 0) {
    sum.has_root = true;
    sum.root.kind = "reported by node 0";
    sum.root.code = code;
    sum.root.what = what;
  }
  sum.restarts = restarts_;
  sum.fates = last_fates_;
  write_file_atomic(s_.files_dir + "/summary-node" + std::to_string(s_.opt->node_rank) + ".json", summary_json(sum));
}

void Agent::on_signal(int sig) {
  if (finished_) return;
  int alive = 0;
  for (const auto& w : workers_) alive += w->alive ? 1 : 0;
  if (!is_terminating(sig)) {
    for (auto& w : workers_)
      if (w->alive) signal_group(w->pid, sig);
    log_line("forwarded " + signal_name(sig) + " to " + std::to_string(alive) + " worker(s)");
    return;
  }
  if (term_signal_) {
    log_line("second " + signal_name(sig) + ": killing the workers now");
    for (auto& w : workers_)
      if (w->alive) signal_group(w->pid, SIGKILL);
    killed_ = true;
    return;
  }
  term_signal_ = sig;
  if (alive > 0) {
    char g[32];
    std::snprintf(g, sizeof g, "%g", s_.opt->grace_period);
    log_line("received " + signal_name(sig) + ": forwarding it to the workers, SIGKILL in " + g +
             " s (send it again to kill now)");
    begin_stop(sig, "launcher signalled");
  }
  if (connected_) {
    send_(Msg("SIGNAL").set("sig", sig).set("node", s_.opt->node_rank).set_num("t", wall_now()));
  } else if (alive == 0) {
    finish_now(128 + sig, "received " + signal_name(sig) + " before the job started");
  } else {
    lost_ = true;
    lost_reason_ = "received " + signal_name(sig);
    lost_time_ = wall_now();
  }
}

void Agent::coordinator_lost(const std::string& why) {
  if (finished_ || lost_) return;
  lost_ = true;
  lost_reason_ = why;
  lost_time_ = wall_now();
  if (round_active_) {
    log_line(why + "; stopping this node's workers");
    begin_stop(SIGTERM, why);
    maybe_finish_round();
  } else {
    finish_now(term_signal_ ? 128 + term_signal_ : kExitPeerLost, why);
  }
}

void Agent::finish_now(int code, const std::string& why) {
  if (finished_) return;
  if (!why.empty()) log_line(why);
  kill_all_now();
  finished_ = true;
  exit_code_ = code;
  if (s_.keep_logs && s_.opt->node_rank != 0) write_node_summary(why, code);
}

void Agent::kill_all_now() {
  for (auto& w : workers_)
    if (w->alive) signal_group(w->pid, SIGKILL);
}

void Agent::tick(double now) {
  if (stopping_ && !killed_ && now >= stop_deadline_) {
    std::string ranks;
    for (auto& w : workers_)
      if (w->alive) {
        signal_group(w->pid, SIGKILL);
        ranks += (ranks.empty() ? "" : ", ") + std::to_string(w->rank);
      }
    killed_ = true;
    if (!ranks.empty()) log_line("grace period over: SIGKILL to rank(s) " + ranks);
  }
  // Pipes still open after every process is gone belong to descendants we could not find; stop
  // waiting for them after a second, but never while a slow console is why we have not read them.
  if (draining_ && now >= drain_deadline_) {
    if (console_->pending() > kConsoleHighWater) drain_deadline_ = now + 0.1;
    else complete_round();
  }
}

double Agent::next_deadline() const {
  double d = 1e18;
  if (stopping_ && !killed_) d = std::min(d, stop_deadline_);
  if (draining_) d = std::min(d, drain_deadline_);
  return d;
}

std::set<pid_t> Agent::live_pids() const {
  std::set<pid_t> out;
  for (const auto& w : workers_)
    if (w->alive) out.insert(w->pid);
  return out;
}

}  // namespace dl
