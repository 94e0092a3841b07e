// detlite-launch: a torchrun-compatible, multi-node process launcher in C++17 and POSIX.
// This file wires the parts together: set-up, the poll loop that supervises, and the teardown.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>

#include "agent.hpp"
#include "coordinator.hpp"

extern char** environ;

namespace dl {
namespace {

EnvMap environ_map() {
  EnvMap env;
  for (char** e = environ; e && *e; ++e) {
    const char* eq = std::strchr(*e, '=');
    if (eq) env.emplace(std::string(*e, static_cast<size_t>(eq - *e)), std::string(eq + 1));
  }
  return env;
}

int g_signal_pipe[2] = {-1, -1};

extern "C" void on_signal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  write_all(g_signal_pipe[1], &b, 1);
  errno = saved;
}

bool install_signals(const std::vector<int>& handled) {
  if (pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return false;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGCHLD, &sa, nullptr);
  for (int s : handled) sigaction(s, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return true;
}

// Signals arrive as bytes on a pipe, so the loop handles them like any other event.
class SignalPipe : public Pollable {
 public:
  explicit SignalPipe(Agent* agent) : agent_(agent) {}
  void add_pollfds(std::vector<pollfd>* fds) override { fds->push_back(pollfd{g_signal_pipe[0], POLLIN, 0}); }
  void on_poll(const pollfd* fds, size_t n) override {
    unsigned char buf[64];
    ssize_t got;
    while (n > 0 && fds[0].revents && (got = read(g_signal_pipe[0], buf, sizeof buf)) > 0)
      for (ssize_t i = 0; i < got; ++i) {
        int status = 0;
        pid_t pid;
        if (buf[i] != SIGCHLD) agent_->on_signal(buf[i]);
        else
          while ((pid = waitpid(-1, &status, WNOHANG)) > 0) agent_->on_child_exit(pid, status);
      }
  }

 private:
  Agent* agent_;
};

std::string host_name() {
  char buf[256] = {0};
  return gethostname(buf, sizeof buf - 1) == 0 ? buf : "localhost";
}

int dry_run(const Options& opt, const EnvMap& env) {
  std::string note;
  const std::vector<std::set<int>> cpus = plan_binding(opt.cpu_bind, opt.nproc_per_node, opt.sysfs_root, env, &note);
  std::string out = "{\n";
  auto field = [&](const std::string& k, const std::string& v) { out += "  " + json_escape(k) + ": " + v + ",\n"; };
  auto text = [&](const std::string& k, const std::string& v) { field(k, v.empty() ? "null" : json_escape(v)); };
  field("nnodes", std::to_string(opt.nnodes));
  field("node_rank", std::to_string(opt.node_rank));
  field("nproc_per_node", std::to_string(opt.nproc_per_node));
  field("master_addr", json_escape(opt.master_addr));
  field("master_port", std::to_string(opt.master_port));
  field("rdzv_endpoint", json_escape(opt.rdzv_host + ":" + std::to_string(opt.rdzv_port)));
  field("run_id", json_escape(opt.run_id));
  text("scheduler", opt.scheduler.name);
  field("hosts", json_list(opt.scheduler.hosts));
  field("max_restarts", std::to_string(opt.max_restarts));
  field("grace_period", fmt_num(opt.grace_period));
  field("rdzv_timeout", fmt_num(opt.rdzv_timeout));
  field("heartbeat_interval", fmt_num(opt.heartbeat_interval));
  field("heartbeat_timeout", fmt_num(opt.heartbeat_timeout));
  text("log_dir", opt.log_dir);
  field("tee", std::to_string(opt.tee));
  field("cpu_bind", json_escape(cpu_bind_name(opt.cpu_bind)));
  std::vector<std::string> sigs;
  for (int s : opt.handled_signals) sigs.push_back(signal_name(s));
  field("signals", json_list(sigs));
  field("command", json_list(worker_command(opt, env)));
  if (!note.empty()) field("note", json_escape(note));
  out += "  \"local_ranks\": [\n";
  for (int lr = 0; lr < opt.nproc_per_node; ++lr) {
    const std::string set = static_cast<size_t>(lr) < cpus.size() ? format_cpulist(cpus[static_cast<size_t>(lr)]) : "";
    out += "    {\"local_rank\": " + std::to_string(lr) + ", \"cpus\": " + json_escape(set) + "}" +
           (lr + 1 < opt.nproc_per_node ? ",\n" : "\n");
  }
  out += "  ]\n}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

// Where worker files go: the user's --log-dir (made absolute: error-file paths must not depend on a
// cwd), else a private temporary directory removed at exit. Empty on failure.
std::string files_dir(Options& opt, const EnvMap& env, bool* temporary) {
  *temporary = opt.log_dir.empty();
  if (!*temporary) {
    char cwd[4096];
    if (opt.log_dir[0] != '/' && getcwd(cwd, sizeof cwd)) opt.log_dir = std::string(cwd) + "/" + opt.log_dir;
    if (make_dirs(opt.log_dir)) return opt.log_dir;
    log_line("error: cannot create --log-dir " + opt.log_dir + ": " + errno_text(errno));
    return "";
  }
  const std::string base = env_get(env, "TMPDIR", "/tmp");
  std::string tmpl = base + "/detlite-launch-XXXXXX";
  if (mkdtemp(&tmpl[0])) return tmpl;
  log_line("error: cannot create a temporary directory in " + base + ": " + errno_text(errno));
  return "";
}

// One node's launcher: the agent, and node 0's coordinator or another node's uplink. Messages
// between the agent and a coordinator in the same process go through two queues, so that neither
// calls back into the other while it is handling a message.
class Launcher {
 public:
  Launcher(Options& opt, const EnvMap& env, Console* console) : opt_(opt), env_(env), console_(console) {}

  int run() {
    const int failed = set_up();
    if (failed) return failed;
    supervise();
    if (hub_) hub_->linger(2.0);  // the result reaches the other nodes before the sockets close
    hub_.reset();
    uplink_.reset();
    teardown_.finish();
    return agent_->exit_code();
  }

 private:
  int set_up() {  // 0, or the exit code when the launcher cannot start
    bool temporary = false;
    const std::string dir = files_dir(opt_, env_, &temporary);
    if (dir.empty()) return kExitUsage;
    // The guardian is forked before any thread exists (the console's writer is one).
    if (!teardown_.start(temporary ? dir : "")) log_line("warning: could not start the guardian process");
    if (!install_signals(opt_.handled_signals)) {
      log_line("error: cannot set up signal handling");
      return 1;
    }
    console_->start();
    set_log_console(console_);
    for (const std::string& n : opt_.notes) log_line(n);
    const bool is_root = opt_.node_rank == 0;
    const std::string host = host_name();
    agent_ = std::make_unique<Agent>(&opt_, env_, dir, host, console_, &teardown_, [this, is_root](const Msg& m) {
      if (is_root) to_coord_.push_back(m);
      else if (uplink_) uplink_->send(m);
    });
    signals_ = std::make_unique<SignalPipe>(agent_.get());
    if (!is_root) {
      uplink_ = start_uplink(&opt_, agent_.get(), host);
      return 0;
    }
    coord_ = std::make_unique<Coordinator>(&opt_, host, [this](int node, const Msg& m) {
      if (node == 0) to_agent_.push_back(m);
      else if (hub_) hub_->send(node, m);
    });
    std::string err;
    if (opt_.nnodes > 1) hub_ = start_hub(&opt_, coord_.get(), &err);
    if (opt_.nnodes > 1 && !hub_) agent_->finish_now(kExitRendezvous, err);
    return 0;
  }

  void deliver_local() {
    while (!to_agent_.empty() || !to_coord_.empty()) {
      for (; !to_coord_.empty(); to_coord_.pop_front()) coord_->handle(0, to_coord_.front());
      for (; !to_agent_.empty(); to_agent_.pop_front()) agent_->handle(to_agent_.front());
    }
  }

  // The one supervision loop: tick every part, poll until the earliest deadline, dispatch.
  void supervise() {
    std::vector<Pollable*> parts = {signals_.get(), hub_.get(), uplink_.get(), agent_.get(), coord_.get()};
    parts.erase(std::remove(parts.begin(), parts.end(), nullptr), parts.end());
    std::vector<pollfd> fds;
    std::vector<size_t> first(parts.size() + 1);
    for (deliver_local(); !agent_->finished(); deliver_local()) {
      const double now = mono_now();
      for (Pollable* p : parts) p->tick(now);
      deliver_local();
      if (agent_->finished()) break;
      fds.clear();
      double deadline = now + 0.25;
      for (size_t i = 0; i < parts.size(); ++i) {
        first[i] = fds.size();
        parts[i]->add_pollfds(&fds);
        deadline = std::min(deadline, parts[i]->next_deadline(now));
      }
      first[parts.size()] = fds.size();
      const int rc = poll(fds.data(), fds.size(), static_cast<int>(std::max(0.0, (deadline - now) * 1000) + 0.999));
      if (rc < 0 && errno != EINTR) return agent_->finish_now(1, "error: poll: " + errno_text(errno));
      for (size_t i = 0; rc > 0 && i < parts.size(); ++i)
        parts[i]->on_poll(fds.data() + first[i], first[i + 1] - first[i]);
    }
  }

  Options& opt_;
  const EnvMap& env_;
  Console* console_;
  Teardown teardown_;
  std::deque<Msg> to_agent_, to_coord_;
  std::unique_ptr<Agent> agent_;
  std::unique_ptr<SignalPipe> signals_;
  std::unique_ptr<Hub> hub_;
  std::unique_ptr<Uplink> uplink_;
  std::unique_ptr<Coordinator> coord_;
};

}  // namespace
}  // namespace dl

int main(int argc, char** argv) {
  using namespace dl;
  // With a closed stdin/stdout/stderr, the launcher's own pipes could land on fds 0-2 and worker
  // output would be written into them.
  for (int fd = 0; fd <= 2; ++fd)
    if (fcntl(fd, F_GETFD) == -1 && open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd) return 1;
  EnvMap env = environ_map();
  Options opt;
  const int parsed = parse_args(std::vector<std::string>(argv, argv + argc), env, &opt);
  if (parsed >= 0) return parsed;
  if (opt.dry_run) return dry_run(opt, env);
  Console console;
  const int code = Launcher(opt, env, &console).run();
  set_log_console(nullptr);
  console.stop();
  return code;
}
