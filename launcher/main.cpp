// detlite-launch: a torchrun-compatible, multi-node process launcher in C++17 and POSIX.
// This file wires the parts together: set-up, the poll loop that supervises, and the teardown.
#include <fcntl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>

#include "agent.hpp"
#include "coordinator.hpp"
#include "plane.hpp"

extern char** environ;

namespace dl {
namespace {
// SIGCHLD and the handled signals are blocked (in every thread: the console's writer starts later)
// and read from a signalfd, so the loop handles them like any other event. Workers unblock them.
int open_signalfd(const std::vector<int>& handled) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  for (int s : handled) sigaddset(&set, s);
  signal(SIGPIPE, SIG_IGN);
  return sigprocmask(SIG_BLOCK, &set, nullptr) == 0 ? signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC) : -1;
}

class SignalReader : public Pollable {
 public:
  SignalReader(int fd, Agent* agent) : fd_(fd), agent_(agent) {}
  ~SignalReader() override { close(fd_); }
  void add_pollfds(std::vector<pollfd>* fds) override { fds->push_back(pollfd{fd_, POLLIN, 0}); }
  void on_poll(const pollfd* fds, size_t n) override {
    signalfd_siginfo si;
    int status = 0;
    for (pid_t pid; n > 0 && fds[0].revents && read(fd_, &si, sizeof si) == sizeof si;) {
      if (si.ssi_signo != SIGCHLD) agent_->on_signal(static_cast<int>(si.ssi_signo));
      else
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) agent_->on_child_exit(pid, status);
    }
  }

 private:
  int fd_;
  Agent* agent_;
};

int dry_run(const Options& opt, const EnvMap& env) {
  std::string note;
  const std::vector<std::set<int>> cpus = plan_binding(opt.cpu_bind, opt.nproc_per_node, opt.sysfs_root, env, &note);
  std::vector<std::string> sigs;
  for (int s : opt.handled_signals) sigs.push_back(signal_name(s));
  auto num = [](long long v) { return std::to_string(v); };
  auto text = [](const std::string& v) { return v.empty() ? "null" : json_escape(v); };
  std::vector<std::pair<std::string, std::string>> fields = {
      {"nnodes", num(opt.nnodes)}, {"node_rank", num(opt.node_rank)}, {"nproc_per_node", num(opt.nproc_per_node)},
      {"master_addr", json_escape(opt.master_addr)}, {"master_port", num(opt.master_port)},
      {"rdzv_endpoint", json_escape(opt.rdzv_host + ":" + num(opt.rdzv_port))}, {"run_id", json_escape(opt.run_id)},
      {"scheduler", text(opt.scheduler.name)}, {"hosts", json_list(opt.scheduler.hosts)},
      {"max_restarts", num(opt.max_restarts)}, {"grace_period", fmt_num(opt.grace_period)},
      {"rdzv_timeout", fmt_num(opt.rdzv_timeout)}, {"heartbeat_interval", fmt_num(opt.heartbeat_interval)},
      {"heartbeat_timeout", fmt_num(opt.heartbeat_timeout)}, {"log_dir", text(opt.log_dir)}, {"tee", num(opt.tee)},
      {"cpu_bind", json_escape(cpu_bind_name(opt.cpu_bind))}, {"signals", json_list(sigs)},
      {"command", json_list(worker_command(opt, env))}};
  if (!note.empty()) fields.emplace_back("note", json_escape(note));
  std::string out = "{\n";
  for (const auto& f : fields) out += "  " + json_escape(f.first) + ": " + f.second + ",\n";
  out += "  \"local_ranks\": [\n";
  for (int lr = 0; lr < opt.nproc_per_node; ++lr)
    out += "    {\"local_rank\": " + num(lr) + ", \"cpus\": " + json_escape(format_cpulist(cpus[lr])) + "}" +
           (lr + 1 < opt.nproc_per_node ? ",\n" : "\n");
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

// The one supervision loop: tick every part, poll until the earliest deadline, dispatch. deliver()
// hands over the messages queued between the agent and a coordinator in this process.
void supervise(std::vector<Pollable*> parts, Agent& agent, const std::function<void()>& deliver) {
  parts.erase(std::remove(parts.begin(), parts.end(), nullptr), parts.end());
  std::vector<pollfd> fds;
  std::vector<size_t> first(parts.size() + 1);
  for (deliver(); !agent.finished(); deliver()) {
    const double now = mono_now();
    for (Pollable* p : parts) p->tick(now);
    deliver();
    if (agent.finished()) break;
    fds.clear();
    double deadline = now + 0.25;
    for (size_t i = 0; i < parts.size(); ++i) {
      first[i] = fds.size();
      parts[i]->add_pollfds(&fds);
      deadline = std::min(deadline, parts[i]->next_deadline(now));
    }
    first[parts.size()] = fds.size();
    const int rc = poll(fds.data(), fds.size(), static_cast<int>(std::max(0.0, (deadline - now) * 1000) + 0.999));
    if (rc < 0 && errno != EINTR) return agent.finish_now(1, "error: poll: " + errno_text(errno));
    for (size_t i = 0; rc > 0 && i < parts.size(); ++i)
      parts[i]->on_poll(fds.data() + first[i], first[i + 1] - first[i]);
  }
}

// One node's launcher: the agent, and node 0's coordinator or another node's uplink. Messages
// between the agent and a coordinator in the same process go through two queues, so that neither
// calls back into the other while it is handling a message. Returns the exit code.
int run(Options& opt, const EnvMap& env, Console* console) {
  bool temporary = false;
  const std::string dir = files_dir(opt, env, &temporary);
  if (dir.empty()) return kExitUsage;
  Teardown teardown;
  // The guardian is forked before any thread exists (the console's writer is one).
  if (!teardown.start(temporary ? dir : "")) log_line("warning: could not start the guardian process");
  const int signal_fd = open_signalfd(opt.handled_signals);
  if (signal_fd < 0) {
    log_line("error: cannot set up signal handling");
    return 1;
  }
  console->start();
  for (const std::string& n : opt.notes) log_line(n);
  const bool is_root = opt.node_rank == 0;
  char name[256] = {0};
  const std::string host = gethostname(name, sizeof name - 1) == 0 ? name : "localhost";
  std::deque<Msg> to_agent, to_coord;
  std::unique_ptr<Plane> plane;  // node 0's hub (only with other nodes) or another node's uplink
  std::unique_ptr<Coordinator> coord;
  Agent agent(&opt, env, dir, host, console, &teardown, [&](const Msg& m) {
    if (is_root) to_coord.push_back(m);
    else if (plane) plane->send(0, m);
  });
  SignalReader signals(signal_fd, &agent);
  if (is_root) {
    coord = std::make_unique<Coordinator>(&opt, host, [&](int node, const Msg& m) {
      if (node == 0) to_agent.push_back(m);
      else if (plane) plane->send(node, m);
    });
    std::string err;
    if (opt.nnodes > 1) plane = start_hub(&opt, coord.get(), &err);
    if (opt.nnodes > 1 && !plane) agent.finish_now(kExitRendezvous, err);
  } else {
    plane = start_uplink(&opt, &agent, host);
  }
  supervise({&signals, plane.get(), &agent, coord.get()}, agent, [&] {
    while (!to_agent.empty() || !to_coord.empty()) {
      for (; !to_coord.empty(); to_coord.pop_front()) coord->handle(0, to_coord.front());
      for (; !to_agent.empty(); to_agent.pop_front()) agent.handle(to_agent.front());
    }
  });
  if (plane) plane->linger(2.0);  // the result reaches the other nodes before the sockets close
  plane.reset();
  teardown.finish();
  return agent.exit_code();
}
}  // namespace
}  // namespace dl

int main(int argc, char** argv) {
  using namespace dl;
  // With fds 0-2 closed, the launcher's own pipes could land on them and worker output would be written into them.
  for (int fd = 0; fd <= 2; ++fd)
    if (fcntl(fd, F_GETFD) == -1 && open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd) return 1;
  EnvMap env;  // taken once: what the workers inherit
  for (char** e = environ; e && *e; ++e)
    if (const char* eq = std::strchr(*e, '=')) env.emplace(std::string(*e, eq - *e), std::string(eq + 1));
  Options opt;
  const int parsed = parse_args(std::vector<std::string>(argv, argv + argc), env, &opt);
  if (parsed >= 0) return parsed;
  if (opt.dry_run) return dry_run(opt, env);
  Console console;
  const int code = run(opt, env, &console);
  console.stop();
  return code;
}
