#include "process.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cerrno>
#include <csignal>

namespace dl {
namespace {
std::vector<char*> c_strings(const std::vector<std::string>& v) {  // null-terminated, as execve wants
  std::vector<char*> out;
  for (const std::string& s : v) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

// Everything the child needs, prepared before fork: after fork it only makes system calls (the
// launcher has other threads, so the child may not allocate).
struct ChildPlan {
  std::vector<std::string> candidates;  // argv[0] resolved against PATH, in search order
  std::vector<std::string> env;         // "KEY=VALUE"
  std::vector<char*> argv, envp, paths;
  cpu_set_t mask;  // empty: leave the affinity alone
  int pipes[3][2];  // stdout, stderr, exec status (close-on-exec: EOF means the exec worked)
  int devnull = -1;
  pid_t parent = 0;
};

[[noreturn]] void exec_child(const ChildPlan& p) {
  // Own session and process group, so the launcher can signal the worker with everything it starts,
  // and terminal signals reach it only through the launcher.
  setsid();
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != p.parent) _exit(128 + SIGKILL);  // the launcher died before prctl took effect
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl {};  // sigaction, not signal(): only it is async-signal-safe after fork
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s) sigaction(s, &dfl, nullptr);  // undo the launcher's SIG_IGN (SIGPIPE)
  if (CPU_COUNT(&p.mask) > 0) sched_setaffinity(0, sizeof p.mask, &p.mask);
  if (p.devnull >= 0) dup2(p.devnull, 0);
  for (int i : {0, 1}) dup2(p.pipes[i][1], i + 1);  // stdout, stderr
  int e = ENOENT;
  for (size_t i = 0; i + 1 < p.paths.size(); ++i) {
    execve(p.paths[i], p.argv.data(), p.envp.data());
    if (errno == EACCES || errno == ENOEXEC) e = errno;  // remember, keep searching
    else if (errno != ENOENT && errno != ENOTDIR) { e = errno; break; }
  }
  write_all(p.pipes[2][1], &e, sizeof e);
  _exit(e == ENOENT || e == ENOTDIR ? 127 : 126);
}

void remove_tree(const std::string& path) {  // without following symbolic links
  for (const std::string& name : list_dir(path)) {
    const std::string child = path + "/" + name;
    struct stat st{};
    if (::lstat(child.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) remove_tree(child);
    else ::unlink(child.c_str());
  }
  ::rmdir(path.c_str());
}

void signal_group(pid_t pgid, int sig) { if (pgid > 1) kill(-pgid, sig); }  // a group that is already gone is fine

// Direct children of this process other than `keep` (orphans re-parented to us as subreaper).
std::vector<pid_t> list_children(pid_t keep) {
  std::vector<pid_t> out;
  for (const std::string& name : list_dir("/proc")) {
    long long pid = 0, ppid = 0;
    std::string stat;
    if (!parse_int(name, &pid) || !read_text_file("/proc/" + name + "/stat", &stat)) continue;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses, so parse after the last ')'.
    const size_t rp = stat.rfind(')');
    if (rp == std::string::npos) continue;
    std::vector<std::string> fields = split(trim(stat.substr(rp + 1)), ' ');
    if (fields.size() >= 2 && parse_int(fields[1], &ppid) && ppid == getpid() && pid != keep)
      out.push_back(static_cast<pid_t>(pid));
  }
  return out;
}

// The guardian: reads pgids from the launcher (each write is one pid_t: a worker's group, minus it
// when its leader exited, 0 on a clean exit); on EOF before the 0 (the launcher died, even by
// SIGKILL) it SIGKILLs every group it knows and removes the launcher's temporary directory.
[[noreturn]] void guardian_main(int fd, const std::string& temp_dir) {
  setpgid(0, 0);  // survives the launcher (no parent-death signal), ignores terminal signals
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU})
    signal(s, SIG_IGN);
  const int devnull = open("/dev/null", O_RDWR);
  for (int other = 0; other < 1024; ++other)  // e.g. the console pipe a caller waits on for EOF
    if (other != fd && other != devnull) close(other);
  for (int std_fd = 0; devnull >= 0 && std_fd <= 2; ++std_fd) dup2(devnull, std_fd);
  std::set<pid_t> groups;
  for (pid_t v = 0;;) {  // writes this small are atomic: a read gets whole records
    const ssize_t n = read(fd, &v, sizeof v);
    if (n < 0 && errno == EINTR) continue;
    if (n != sizeof v) break;
    if (v == 0) _exit(0);
    if (v > 1) groups.insert(v);
    else groups.erase(-v);
  }
  for (pid_t g : groups) kill(-g, SIGKILL);
  if (!temp_dir.empty()) remove_tree(temp_dir);
  _exit(0);
}
}  // namespace

SpawnResult spawn_worker(const std::vector<std::string>& argv, const EnvMap& env, const std::set<int>& cpus) {
  SpawnResult res;
  ChildPlan p;
  const std::string path = env_get(env, "PATH");
  const bool search = argv[0].find('/') == std::string::npos;  // a name, not a path
  for (const std::string& dir : split(path.empty() ? "/usr/local/bin:/usr/bin:/bin" : path, ':'))
    if (search) p.candidates.push_back((dir.empty() ? "." : dir) + "/" + argv[0]);
  if (!search) p.candidates.push_back(argv[0]);
  for (const auto& kv : env) p.env.push_back(kv.first + "=" + kv.second);
  p.argv = c_strings(argv);
  p.envp = c_strings(p.env);
  p.paths = c_strings(p.candidates);
  CPU_ZERO(&p.mask);
  for (int c : cpus)
    if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &p.mask);
  for (int i = 0; i < 3; ++i)
    if (pipe2(p.pipes[i], O_CLOEXEC) != 0) {
      res.error = "pipe: " + errno_text(errno);
      for (int j = 0; j < i; ++j) close(p.pipes[j][0]), close(p.pipes[j][1]);
      return res;
    }
  p.devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  p.parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) exec_child(p);
  if (p.devnull >= 0) close(p.devnull);
  for (auto& fds : p.pipes) close(fds[1]);
  if (pid < 0) {
    res.error = "fork: " + errno_text(errno);
    for (auto& fds : p.pipes) close(fds[0]);
    return res;
  }
  // Blocks only until the child's exec succeeds (close-on-exec gives EOF) or fails (errno arrives).
  int child_errno = 0;
  ssize_t n;
  while ((n = read(p.pipes[2][0], &child_errno, sizeof child_errno)) < 0 && errno == EINTR) continue;
  close(p.pipes[2][0]);
  res.pid = pid;
  res.exec_errno = n == static_cast<ssize_t>(sizeof child_errno) ? child_errno : 0;
  res.out_fd = p.pipes[0][0];
  res.err_fd = p.pipes[1][0];
  for (int fd : {res.out_fd, res.err_fd}) fcntl(fd, F_SETFL, O_NONBLOCK);  // no other flags to keep
  return res;
}

bool Teardown::start(const std::string& temp_dir) {
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  temp_dir_ = temp_dir;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return false;
  const pid_t pid = fork();
  if (pid == 0) guardian_main(fds[0], temp_dir);  // the write end closes with the other fds there
  close(fds[0]);
  if (pid < 0) close(fds[1]);
  guardian_ = pid;
  guardian_fd_ = pid < 0 ? -1 : fds[1];
  return pid > 0;
}

void Teardown::tell_guardian(pid_t v) { if (guardian_fd_ >= 0) write_all(guardian_fd_, &v, sizeof v); }

void Teardown::watch(pid_t pgid) {
  groups_.insert(pgid);
  tell_guardian(pgid);
}

void Teardown::exited(pid_t pgid) {
  signal_group(pgid, SIGKILL);
  groups_.erase(pgid);
  tell_guardian(-pgid);
}

void Teardown::signal_all(int sig) { for (pid_t g : groups_) signal_group(g, sig); }

void Teardown::sweep(double max_seconds) {
  const double deadline = mono_now() + max_seconds;
  // Killing one child may orphan its own children to us, hence the loop.
  for (std::vector<pid_t> kids; !(kids = list_children(guardian_)).empty();) {
    for (pid_t p : kids) {
      kill(p, SIGKILL);
      if (getpgid(p) == p) signal_group(p, SIGKILL);  // a group leader: take its group with it
    }
    for (pid_t p : kids)
      while (waitpid(p, nullptr, WNOHANG) == 0 && mono_now() < deadline) usleep(2000);
    if (mono_now() >= deadline) return;
  }
}

void Teardown::finish() {
  signal_all(SIGKILL);
  sweep(2.0);
  tell_guardian(0);
  if (guardian_fd_ >= 0) close(guardian_fd_);
  guardian_fd_ = -1;
  const double deadline = mono_now() + 2;
  while (guardian_ > 0 && waitpid(guardian_, nullptr, WNOHANG) == 0 && mono_now() < deadline) usleep(1000);
  guardian_ = -1;
  if (!temp_dir_.empty()) remove_tree(temp_dir_);
}
}  // namespace dl
