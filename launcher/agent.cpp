#include "agent.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <deque>

namespace dl {
namespace {
constexpr size_t kReadChunk = 64 * 1024;
constexpr size_t kReadBudget = 1 << 20;   // per stream per poll round, for fairness
constexpr size_t kConsoleHighWater = 8u << 20;
constexpr size_t kMaxLine = 64 * 1024;  // longer lines reach the console in pieces: memory stays bounded
constexpr size_t kTailLines = 20;       // the tail of a worker's output kept for the failure report
constexpr size_t kTailWidth = 400;

// Whether a local rank's stream (1 stdout, 2 stderr) appears on the launcher's console.
bool on_console(const Options& opt, int local_rank, int stream) {
  if (!opt.local_ranks_filter.empty() && !opt.local_ranks_filter.count(local_rank)) return false;
  return opt.log_dir.empty() || !(opt.redirects & stream) || (opt.tee & stream);
}

void close_fd(int* fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}
}  // namespace

std::vector<std::string> worker_command(const Options& opt, const EnvMap& env) {
  std::vector<std::string> cmd;
  if (!opt.no_python) {
    cmd = {env_get(env, "PYTHON_EXEC", "python3"), "-u"};
    if (cmd[0].empty()) cmd[0] = "python3";
    if (opt.module) cmd.push_back("-m");
  }
  cmd.push_back(opt.script);
  cmd.insert(cmd.end(), opt.script_args.begin(), opt.script_args.end());
  return cmd;
}

struct Agent::Worker {
  struct Stream {
    int fd = -1, log = -1;  // the pipe from the worker, and stdout.log / stderr.log
    std::string partial;  // the bytes after the last complete line
  };
  Stream io[2];  // stdout, stderr
  std::string prefix, error_file;
  std::deque<std::string> tail;  // the last lines of both streams, each cut to a readable length
  Fate fate;
  double start_mono = 0;

  ~Worker() { for (Stream& s : io) close_fd(&s.fd), close_fd(&s.log); }
  bool alive() const { return fate.state == RankState::Running; }
  bool open() const { return io[0].fd >= 0 || io[1].fd >= 0; }
};

Agent::Agent(const Options* opt, const EnvMap& env, std::string files_dir, std::string hostname, Console* console,
             Teardown* teardown, Send to_coordinator)
    : o_(*opt), env_(env), files_dir_(std::move(files_dir)), hostname_(std::move(hostname)),
      command_(worker_command(*opt, env)), console_(console), teardown_(teardown), send_(std::move(to_coordinator)) {
  std::string note;
  cpus_ = plan_binding(o_.cpu_bind, o_.nproc_per_node, o_.sysfs_root, env, &note);
  if (!note.empty()) log_line(note);
  cpus_per_rank_ = std::max(1, static_cast<int>(allowed_cpus(env).size()) / o_.nproc_per_node);
  link_ = o_.node_rank == 0 ? Link::Joined : Link::Joining;
}

Agent::~Agent() = default;

int Agent::alive() const {
  return static_cast<int>(std::count_if(workers_.begin(), workers_.end(), [](auto& w) { return w->alive(); }));
}

void Agent::handle(const Msg& m) {
  if (m.type == "START" && state_ == AgentState::Waiting) {
    log_.round = static_cast<int>(m.get_int("round"));
    if (!term_signal_ && link_ != Link::Lost) return start_round(m);
    // Shutting down: the round is answered without starting anything, so the coordinator can finish.
    for (int lr = 0; lr < o_.nproc_per_node; ++lr)
      send_(Fate{static_cast<int>(m.get_int("offset")) + lr, lr, o_.node_rank, log_.round, hostname_}.to_msg());
    send_(Msg("DONE").set("round", log_.round));
  } else if (m.type == "ABORT" && state_ == AgentState::Running && m.get_int("round", -1) == log_.round) {
    log_line("stopping this node's workers: " + m.get("reason", "another node failed"));
    stop(SIGTERM);
  } else if (m.type == "RESULT" && !finished()) {
    const int code = static_cast<int>(m.get_int("code", 1));
    const int root_node = static_cast<int>(m.get_int("root_node", -1));
    const bool full = o_.node_rank == 0 || root_node == o_.node_rank || root_node < 0;  // the report's nodes
    if (code && full) log_lines(m.get("report"));
    if (code && !full)
      log_line("job failed, exit code " + std::to_string(code) + ": " + m.get("root_what") +
               " (full report on node " + std::to_string(root_node) + ")");
    finish(code, m.get("root_what"));
  }
}

void Agent::start_round(const Msg& m) {
  log_.world_size = static_cast<int>(m.get_int("world"));
  if (log_.round > 0) {
    const std::string why = m.get("reason");
    log_.restarts.push_back("round " + std::to_string(log_.round - 1) + ": " + why);
    log_line("restart " + std::to_string(log_.round) + "/" + std::to_string(o_.max_restarts) + " (" + why +
             "), MASTER_PORT " + m.get("port"));
  }
  workers_.clear();
  state_ = AgentState::Running;
  EnvMap base = env_;  // torchrun's environment for the round
  std::string sigs;
  for (int sig : o_.handled_signals) sigs += (sigs.empty() ? "" : ",") + signal_name(sig);
  base["WORLD_SIZE"] = base["ROLE_WORLD_SIZE"] = std::to_string(log_.world_size);
  base["LOCAL_WORLD_SIZE"] = std::to_string(o_.nproc_per_node);
  base["GROUP_RANK"] = std::to_string(o_.node_rank);
  base["GROUP_WORLD_SIZE"] = m.get("nnodes");
  base["ROLE_NAME"] = o_.role;
  base["MASTER_ADDR"] = m.get("addr", o_.master_addr);
  base["MASTER_PORT"] = m.get("port");
  base["TORCHELASTIC_RESTART_COUNT"] = std::to_string(log_.round);
  base["TORCHELASTIC_MAX_RESTARTS"] = std::to_string(o_.max_restarts);
  base["TORCHELASTIC_RUN_ID"] = o_.run_id;
  base["TORCHELASTIC_USE_AGENT_STORE"] = "False";
  base["TORCHELASTIC_SIGNALS_TO_HANDLE"] = sigs;
  base.emplace("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1");  // unless already set
  bool spawned = true;
  for (int lr = 0; lr < o_.nproc_per_node; ++lr)
    spawned = spawn(lr, static_cast<int>(m.get_int("offset")) + lr, base) && spawned;
  if (spawned) return;
  send_(Msg("FAIL").set("round", log_.round).set("what", "a worker could not be started"));
  stop(SIGTERM);
  after_exit();
}

bool Agent::spawn(int lr, int rank, const EnvMap& base) {
  auto w = std::make_unique<Worker>();
  Fate& f = w->fate = Fate{rank, lr, o_.node_rank, log_.round, hostname_};
  w->prefix = "[rank" + std::to_string(rank) + "]: ";
  const std::set<int>& cpus = cpus_[static_cast<size_t>(lr)];
  const std::string dir = files_dir_ + "/attempt_" + std::to_string(log_.round) + "/rank_" + std::to_string(rank);
  make_dirs(dir);
  w->error_file = dir + "/error.json";
  unlink(w->error_file.c_str());
  for (int i = 0; i < 2 && !o_.log_dir.empty(); ++i)
    w->io[i].log = open((dir + (i ? "/stderr.log" : "/stdout.log")).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                        0644);
  EnvMap env = base;
  env["RANK"] = env["ROLE_RANK"] = std::to_string(rank);
  env["LOCAL_RANK"] = std::to_string(lr);
  env["TORCHELASTIC_ERROR_FILE"] = w->error_file;
  // The CPUs a worker may use: its binding, else this launcher's share (torchrun sets 1).
  if (!env_.count("OMP_NUM_THREADS") && o_.nproc_per_node > 1)
    env["OMP_NUM_THREADS"] = std::to_string(cpus.empty() ? cpus_per_rank_ : static_cast<int>(cpus.size()));
  w->start_mono = mono_now();
  const SpawnResult r = spawn_worker(command_, env, cpus);
  f.pid = r.pid;
  f.state = r.pid < 0 ? RankState::Failed : RankState::Running;
  if (r.pid < 0) {
    f.exit_code = 1;
    f.error = "cannot start worker: " + r.error;
    f.t_exit = wall_now();
  } else {
    w->io[0].fd = r.out_fd;
    w->io[1].fd = r.err_fd;
    teardown_->watch(r.pid);
    if (r.exec_errno) f.error = "cannot execute '" + command_[0] + "': " + errno_text(r.exec_errno);
  }
  workers_.push_back(std::move(w));
  return r.pid >= 0;
}

// The one way a round's workers are told to stop: the signal to every worker's process group now,
// SIGKILL when the grace period is over (tick), or at once without one.
void Agent::stop(int sig) {
  if (state_ != AgentState::Running) return;
  if (o_.grace_period <= 0) return kill_now();
  teardown_->signal_all(sig);
  state_ = AgentState::Stopping;
  deadline_ = mono_now() + o_.grace_period;
}

void Agent::kill_now() {
  teardown_->signal_all(SIGKILL);
  if (state_ == AgentState::Running || state_ == AgentState::Stopping) state_ = AgentState::Killing;
}

void Agent::on_child_exit(pid_t pid, int status) {
  auto it = std::find_if(workers_.begin(), workers_.end(), [&](auto& w) { return w->alive() && w->fate.pid == pid; });
  if (it == workers_.end()) return;
  Worker& w = **it;
  Fate& f = w.fate;
  f.t_exit = wall_now();
  f.duration = mono_now() - w.start_mono;
  if (WIFSIGNALED(status)) f.signal = WTERMSIG(status);
  else f.exit_code = WEXITSTATUS(status);
  teardown_->exited(pid);
  for (int i : {0, 1}) read_stream(w, i);
  const bool stopping = state_ == AgentState::Stopping || state_ == AgentState::Killing || link_ == Link::Lost;
  f.state = f.code() == 0 ? RankState::Succeeded : stopping ? RankState::Terminated : RankState::Failed;
  if (f.state == RankState::Failed) {
    const std::string msg = error_file_message(w.error_file);
    if (!msg.empty()) f.error += (f.error.empty() ? "" : "\n") + msg;
    const std::string who = "rank " + std::to_string(f.rank);
    send_(Msg("FAIL").set("round", log_.round).set("rank", f.rank).set("code", f.code()).set(
        "what", who + " on node " + std::to_string(o_.node_rank) + " " + f.how()));
    log_line(who + " (pid " + std::to_string(pid) + ") " + f.how() + "; stopping the other workers");
    stop(SIGTERM);
  }
  after_exit();
}

// Once every worker is gone: kill escaped descendants (re-parented to us), then give the pipes a
// moment to deliver their last bytes before the round is complete.
void Agent::after_exit() {
  if (!in_round() || alive() > 0) return;
  if (state_ != AgentState::Draining) {
    teardown_->sweep(1.0);
    state_ = AgentState::Draining;
    deadline_ = mono_now() + 1.0;
    for (auto& w : workers_)
      for (int i : {0, 1}) read_stream(*w, i);
  }
  if (std::none_of(workers_.begin(), workers_.end(), [](auto& w) { return w->open(); })) complete_round();
}

void Agent::complete_round() {
  log_.fates.clear();
  for (auto& w : workers_) {
    for (int i : {0, 1}) {
      read_stream(*w, i);  // whatever is still buffered in the pipes
      close_stream(*w, i);
    }
    for (const std::string& line : w->tail) w->fate.tail += (w->fate.tail.empty() ? "" : "\n") + line;
    log_.fates.push_back(w->fate);
  }
  state_ = AgentState::Waiting;
  if (link_ != Link::Lost) {
    for (const Fate& f : log_.fates) send_(f.to_msg());
    return send_(Msg("DONE").set("round", log_.round));
  }
  // No coordinator to decide: the earliest local failure before the loss, else the loss itself.
  const Fate* first = nullptr;
  for (const Fate& f : log_.fates)
    if (f.state == RankState::Failed && f.t_exit <= lost_.t && (!first || f.t_exit < first->t_exit)) first = &f;
  const RootCause root{first ? CauseKind::Worker : CauseKind::Lost, first ? first->code() : lost_.code,
                       first ? "rank " + std::to_string(first->rank) + " " + first->how() : lost_.what, -1, 0,
                       first ? *first : Fate{}};
  log_lines(format_report(root, log_.fates));
  finish(root.code, root.what);
}

// This node's exit code, and its summary (node 0's summary is the coordinator's).
void Agent::finish(int code, const std::string& what) {
  state_ = AgentState::Finished;
  exit_code_ = code;
  if (o_.log_dir.empty() || o_.node_rank == 0) return;
  const RootCause root{CauseKind::ReportedByNode0, code, what};
  write_summary(files_dir_, o_, code != 0 ? &root : nullptr, log_);
}

void Agent::on_signal(int sig) {
  const int n = alive();
  const std::string name = signal_name(sig);
  if (finished()) return;
  if (sig == SIGUSR1 || sig == SIGUSR2) {  // only forwarded
    teardown_->signal_all(sig);
    return log_line("forwarded " + name + " to " + std::to_string(n) + " worker(s)");
  }
  if (term_signal_) {
    log_line("second " + name + ": killing the workers now");
    return kill_now();
  }
  term_signal_ = sig;
  if (n > 0) {
    log_line("received " + name + ": forwarding it to the workers, SIGKILL in " + fmt_num(o_.grace_period) +
             " s (send it again to kill now)");
    stop(sig);
  }
  if (link_ == Link::Joined)
    return send_(Msg("SIGNAL").set("sig", sig).set("node", o_.node_rank).set_num("t", wall_now()));
  if (n == 0) return finish_now(128 + sig, "received " + name + " before the job started");
  link_ = Link::Lost;
  lost_ = {CauseKind::Lost, 128 + sig, "received " + name, -1, wall_now()};
}

void Agent::coordinator_lost(const std::string& why) {
  if (finished() || link_ == Link::Lost) return;
  link_ = Link::Lost;
  lost_ = {CauseKind::Lost, term_signal_ ? 128 + term_signal_ : kExitPeerLost, why, -1, wall_now()};
  if (!in_round()) return finish_now(lost_.code, why);
  log_line(why + "; stopping this node's workers");
  stop(SIGTERM);
  after_exit();
}

// Workers still alive are killed by the teardown at exit; nothing here may wait for them.
void Agent::finish_now(int code, const std::string& why) {
  if (finished()) return;
  if (!why.empty()) log_line(why);
  finish(code, why);
}

void Agent::tick(double now) {
  if (state_ == AgentState::Stopping && now >= deadline_) {
    std::string ranks;
    for (auto& w : workers_)
      if (w->alive()) ranks += (ranks.empty() ? "" : ", ") + std::to_string(w->fate.rank);
    kill_now();
    if (!ranks.empty()) log_line("grace period over: SIGKILL to rank(s) " + ranks);
  }
  // Pipes still open after every process is gone belong to descendants we could not find; stop
  // waiting for them after a second, but never while a slow console is why we have not read them.
  if (state_ == AgentState::Draining && now >= deadline_) {
    if (console_->pending() > kConsoleHighWater) deadline_ = now + 0.1;
    else complete_round();
  }
}

double Agent::next_deadline(double now) const {
  double d = state_ == AgentState::Stopping || state_ == AgentState::Draining ? deadline_ : kNever;
  const bool backed_up = console_->pending() > kConsoleHighWater;  // pipes not polled: look again soon
  if (backed_up && std::any_of(workers_.begin(), workers_.end(), [](auto& w) { return w->open(); }))
    d = std::min(d, now + 0.005);
  return d;
}

void Agent::add_pollfds(std::vector<pollfd>* fds) {
  if (console_->pending() > kConsoleHighWater) return;  // back-pressure: let the console catch up
  for (const auto& w : workers_)
    for (const auto& s : w->io)
      if (s.fd >= 0) fds->push_back(pollfd{s.fd, POLLIN, 0});
}

void Agent::on_poll(const pollfd* fds, size_t n) {
  for (size_t k = 0; k < n; ++k)
    for (auto& w : workers_)
      for (int i = 0; i < 2; ++i)
        if (w->io[i].fd == fds[k].fd && (fds[k].revents & (POLLIN | POLLHUP | POLLERR))) read_stream(*w, i);
  if (state_ == AgentState::Draining) after_exit();  // the last pipes may have closed
}

void Agent::emit_line(Worker& w, int i, const std::string& line) {
  w.tail.push_back(line.size() > kTailWidth ? line.substr(0, kTailWidth) + "..." : line);
  if (w.tail.size() > kTailLines) w.tail.pop_front();
  if (on_console(o_, w.fate.local_rank, i + 1)) console_->write(i + 1, w.prefix + line + "\n");
}

// Reads what stream i has (up to the budget), emitting its complete lines, and kMaxLine-byte pieces of a longer one.
void Agent::read_stream(Worker& w, int i) {
  Worker::Stream& s = w.io[i];
  char buf[kReadChunk];
  for (size_t budget = kReadBudget; s.fd >= 0 && budget > 0;) {
    const ssize_t n = read(s.fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) return close_stream(w, i);
    if (s.log >= 0) write_all(s.log, buf, static_cast<size_t>(n));
    std::string& p = s.partial;
    p.append(buf, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl; (nl = p.find('\n', start)) != std::string::npos; start = nl + 1)
      emit_line(w, i, p.substr(start, nl - start));
    p.erase(0, start);
    for (; p.size() >= kMaxLine; p.erase(0, kMaxLine)) emit_line(w, i, p.substr(0, kMaxLine));
    budget -= std::min(budget, static_cast<size_t>(n));
  }
}

void Agent::close_stream(Worker& w, int i) {
  if (w.io[i].fd < 0) return;
  if (!w.io[i].partial.empty()) emit_line(w, i, w.io[i].partial);
  w.io[i].partial.clear();
  close_fd(&w.io[i].fd);
  close_fd(&w.io[i].log);
}
}  // namespace dl
