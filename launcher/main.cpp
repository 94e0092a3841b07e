// detlite-launch: a torchrun-compatible, multi-node process launcher in C++17 and POSIX.
// This file wires the parts together: argument parsing, the poll loop, signals, and the control
// connections between node 0 (coordinator) and the other nodes.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>

#include "affinity.hpp"
#include "args.hpp"
#include "control.hpp"
#include "coordinator.hpp"
#include "output.hpp"
#include "plane.hpp"
#include "process.hpp"
#include "slurm.hpp"
#include "supervisor.hpp"
#include "util.hpp"

namespace dl {
namespace {

int g_signal_pipe[2] = {-1, -1};

extern "C" void on_signal(int sig) {
  int saved = errno;
  unsigned char b = static_cast<unsigned char>(sig);
  ssize_t r = write(g_signal_pipe[1], &b, 1);
  (void)r;
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

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  return buf;
}

std::string fmt_seconds(double s) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", s);
  return b;
}

std::set<int> allowed_cpus(const EnvMap& env) {
  std::set<int> out;
  std::string forced = env_get(env, "DETLITE_ALLOWED_CPUS");  // tests: canned topologies
  if (!forced.empty() && parse_cpulist(forced, &out)) return out;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) out.insert(c);
  return out;
}

std::vector<std::set<int>> plan_binding(const Options& opt, const EnvMap& env, std::string* note) {
  if (opt.cpu_bind == CpuBind::None) return {};
  Topology topo;
  std::string err;
  if (!read_topology(opt.sysfs_root, &topo, &err)) {
    *note = "warning: --cpu-bind " + cpu_bind_name(opt.cpu_bind) + " ignored: " + err;
    return {};
  }
  std::vector<int> gpus =
      visible_gpus(topo, env_get(env, "CUDA_VISIBLE_DEVICES"), env_has(env, "CUDA_VISIBLE_DEVICES"));
  return compute_binding(topo, opt.cpu_bind, opt.nproc_per_node, gpus, allowed_cpus(env));
}

int dry_run(const Options& opt, const EnvMap& env) {
  std::string note;
  std::vector<std::set<int>> cpus = plan_binding(opt, env, &note);
  std::string out = "{\n";
  auto field = [&](const std::string& k, const std::string& v) { out += "  " + json_escape(k) + ": " + v + ",\n"; };
  field("nnodes", std::to_string(opt.nnodes));
  field("node_rank", std::to_string(opt.node_rank));
  field("nproc_per_node", std::to_string(opt.nproc_per_node));
  field("master_addr", json_escape(opt.master_addr));
  field("master_port", std::to_string(opt.master_port));
  field("rdzv_endpoint", json_escape(opt.rdzv_host + ":" + std::to_string(opt.rdzv_port)));
  field("run_id", json_escape(opt.run_id));
  field("scheduler", opt.scheduler.name.empty() ? "null" : json_escape(opt.scheduler.name));
  std::string hosts = "[";
  for (size_t i = 0; i < opt.scheduler.hosts.size(); ++i) hosts += (i ? ", " : "") + json_escape(opt.scheduler.hosts[i]);
  field("hosts", hosts + "]");
  field("max_restarts", std::to_string(opt.max_restarts));
  field("grace_period", fmt_seconds(opt.grace_period));
  field("rdzv_timeout", fmt_seconds(opt.rdzv_timeout));
  field("heartbeat_interval", fmt_seconds(opt.heartbeat_interval));
  field("heartbeat_timeout", fmt_seconds(opt.heartbeat_timeout));
  field("log_dir", opt.log_dir.empty() ? "null" : json_escape(opt.log_dir));
  field("tee", std::to_string(opt.tee));
  field("cpu_bind", json_escape(cpu_bind_name(opt.cpu_bind)));
  std::string sigs = "[";
  for (size_t i = 0; i < opt.handled_signals.size(); ++i)
    sigs += (i ? ", " : "") + json_escape(signal_name(opt.handled_signals[i]));
  field("signals", sigs + "]");
  std::string cmd = "[";
  std::vector<std::string> argv = worker_command(opt, env);
  for (size_t i = 0; i < argv.size(); ++i) cmd += (i ? ", " : "") + json_escape(argv[i]);
  field("command", cmd + "]");
  if (!note.empty()) field("note", json_escape(note));
  out += "  \"local_ranks\": [\n";
  for (int lr = 0; lr < opt.nproc_per_node; ++lr) {
    std::string set = static_cast<size_t>(lr) < cpus.size() ? format_cpulist(cpus[static_cast<size_t>(lr)]) : "";
    out += "    {\"local_rank\": " + std::to_string(lr) + ", \"cpus\": " + json_escape(set) + "}" +
           (lr + 1 < opt.nproc_per_node ? ",\n" : "\n");
  }
  out += "  ]\n}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

int run(Options& opt, const EnvMap& env) {
  const std::string hostname = host_name();
  const bool is_root = opt.node_rank == 0;

  if (!opt.log_dir.empty() && opt.log_dir[0] != '/') {  // error-file paths must not depend on a cwd
    char cwd[4096];
    if (getcwd(cwd, sizeof cwd)) opt.log_dir = std::string(cwd) + "/" + opt.log_dir;
  }
  std::string files_dir = opt.log_dir, temp_dir;
  if (!opt.log_dir.empty()) {
    if (!make_dirs(opt.log_dir)) {
      log_line("error: cannot create --log-dir " + opt.log_dir + ": " + errno_text(errno));
      return kExitUsage;
    }
  } else {
    std::string base = env_get(env, "TMPDIR", "/tmp");
    std::string tmpl = base + "/detlite-launch-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) {
      log_line("error: cannot create a temporary directory in " + base + ": " + errno_text(errno));
      return kExitUsage;
    }
    temp_dir = files_dir = buf.data();
  }

  become_subreaper();
  Guardian guardian;  // forked before any thread exists
  if (!guardian.start(temp_dir)) log_line("warning: could not start the guardian process");
  if (!install_signals(opt.handled_signals)) {
    log_line("error: cannot set up signal handling");
    return 1;
  }
  Console console;
  console.start();
  set_log_console(&console);
  for (const std::string& n : opt.notes) log_line(n);
  std::string bind_note;
  std::vector<std::set<int>> cpus = plan_binding(opt, env, &bind_note);
  if (!bind_note.empty()) log_line(bind_note);

  // Node 0 hosts the coordinator; messages between it and the local agent go through two queues,
  // to and from other nodes through the hub / uplink.
  std::deque<Msg> to_agent, to_coord;
  std::unique_ptr<Hub> hub;
  std::unique_ptr<Uplink> uplink;
  std::unique_ptr<Coordinator> coord;

  Agent::Setup setup;
  setup.opt = &opt;
  setup.env = env;
  setup.command = worker_command(opt, env);
  setup.cpus = cpus;
  setup.files_dir = files_dir;
  setup.keep_logs = !opt.log_dir.empty();
  setup.hostname = hostname;
  Agent agent(std::move(setup), &console, &guardian, [&](const Msg& m) {
    if (is_root) to_coord.push_back(m);
    else if (uplink) uplink->send(m);
  });
  agent.set_connected(is_root);

  if (is_root) {
    std::string err;
    if (opt.nnodes > 1) {
      hub = std::make_unique<Hub>(&opt);
      if (!hub->listen(&err)) agent.finish_now(kExitRendezvous, err);
    }
    if (!agent.finished()) {
      coord = std::make_unique<Coordinator>(&opt, hostname, opt.log_dir, [&](int node, const Msg& m) {
        if (node == 0) to_agent.push_back(m);
        else if (hub) hub->send(node, m);
      });
      if (hub) hub->set_coordinator(coord.get());
    }
  } else {
    uplink = std::make_unique<Uplink>(&opt, &agent, hostname);
  }

  auto deliver_local = [&]() {
    while (!to_agent.empty() || !to_coord.empty()) {
      while (!to_coord.empty()) {
        Msg m = std::move(to_coord.front());
        to_coord.pop_front();
        if (coord) coord->handle(0, m);
      }
      while (!to_agent.empty()) {
        Msg m = std::move(to_agent.front());
        to_agent.pop_front();
        agent.handle(m);
      }
    }
  };

  auto handle_signals = [&]() {
    unsigned char buf[64];
    ssize_t n;
    while ((n = read(g_signal_pipe[0], buf, sizeof buf)) > 0) {
      for (ssize_t i = 0; i < n; ++i) {
        if (buf[i] == SIGCHLD) {
          int status = 0;
          pid_t pid;
          while ((pid = waitpid(-1, &status, WNOHANG)) > 0) agent.on_child_exit(pid, status);
        } else {
          agent.on_signal(buf[i]);
        }
      }
    }
  };

  std::vector<pollfd> fds;
  deliver_local();
  while (!agent.finished()) {
    const double now = mono_now();
    if (uplink) uplink->tick(now);
    if (hub) hub->tick(now);
    agent.tick(now);
    if (coord) coord->tick(now);
    deliver_local();
    if (agent.finished()) break;

    fds.clear();
    fds.push_back(pollfd{g_signal_pipe[0], POLLIN, 0});
    const size_t hub_at = fds.size();
    if (hub) hub->add_pollfds(&fds);
    const size_t uplink_at = fds.size();
    if (uplink) uplink->add_pollfds(&fds);
    const size_t agent_at = fds.size();
    agent.add_pollfds(&fds);

    double deadline = std::min(now + 0.25, agent.next_deadline());
    if (coord) deadline = std::min(deadline, coord->next_deadline());
    if (hub) deadline = std::min(deadline, hub->next_deadline(now));
    if (uplink) deadline = std::min(deadline, uplink->next_deadline(now));
    if (agent_at == fds.size() && agent.has_open_streams()) deadline = std::min(deadline, now + 0.005);
    const int timeout_ms = static_cast<int>(std::max(0.0, (deadline - now) * 1000.0) + 0.999);
    const int rc = poll(fds.data(), fds.size(), timeout_ms);
    if (rc < 0 && errno != EINTR) {
      log_line("error: poll: " + errno_text(errno));
      agent.finish_now(1, "");
      break;
    }
    if (rc <= 0) continue;
    if (fds[0].revents) handle_signals();
    if (hub) hub->on_poll(fds.data() + hub_at, uplink_at - hub_at);
    if (uplink) uplink->on_poll(fds.data() + uplink_at, agent_at - uplink_at);
    for (size_t i = agent_at; i < fds.size(); ++i)
      if (fds[i].revents) agent.on_pollfd(fds[i]);
    deliver_local();
  }

  if (hub) hub->linger(2.0);
  hub.reset();
  uplink.reset();
  agent.kill_all_now();
  std::set<pid_t> keep;
  if (guardian.pid() > 0) keep.insert(guardian.pid());
  sweep_children(keep, 2.0);
  guardian.quit();
  if (!temp_dir.empty()) remove_tree(temp_dir);
  const int code = agent.exit_code();
  set_log_console(nullptr);
  console.stop();
  return code;
}

}  // namespace
}  // namespace dl

int main(int argc, char** argv) {
  using namespace dl;
  // With a closed stdin/stdout/stderr, the launcher's own pipes could land on fds 0-2 and worker
  // output would be written into them.
  for (int fd = 0; fd <= 2; ++fd)
    if (fcntl(fd, F_GETFD) == -1 && open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd) return 1;
  std::vector<std::string> args(argv, argv + argc);
  EnvMap env = environ_map();
  Options opt;
  ParseResult pr = parse_args(args, env, &opt);
  switch (pr.status) {
    case ParseStatus::Help: {
      std::string h = help_text();
      std::fwrite(h.data(), 1, h.size(), stdout);
      return 0;
    }
    case ParseStatus::Version:
      std::printf("detlite-launch %s\n", kVersion);
      return 0;
    case ParseStatus::ExpandHostlist: {
      std::vector<std::string> hosts;
      std::string err;
      if (!expand_hostlist(pr.hostlist, &hosts, &err)) {
        std::fprintf(stderr, "detlite-launch: %s\n", err.c_str());
        return kExitUsage;
      }
      for (const std::string& h : hosts) std::printf("%s\n", h.c_str());
      return 0;
    }
    case ParseStatus::Error:
      std::fprintf(stderr, "detlite-launch: error: %s\n", pr.error.c_str());
      return kExitUsage;
    case ParseStatus::Ok:
      break;
  }
  if (opt.dry_run) return dry_run(opt, env);
  return run(opt, env);
}
