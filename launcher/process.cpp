#include "process.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <map>

#include "util.hpp"

namespace dl {

namespace {

void set_nonblocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

void write_all_raw(int fd, const void* data, size_t len) {
  const char* p = static_cast<const char*>(data);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    len -= static_cast<size_t>(n);
  }
}

}  // namespace

SpawnResult spawn_worker(const SpawnRequest& req) {
  SpawnResult res;
  if (req.argv.empty()) {
    res.error = "empty command";
    return res;
  }
  // Everything the child needs is prepared before fork: after fork it only makes system calls.
  std::vector<std::string> candidates;
  const std::string& prog = req.argv[0];
  if (prog.find('/') != std::string::npos) {
    candidates.push_back(prog);
  } else {
    for (const std::string& dir : split(req.path_env.empty() ? "/usr/local/bin:/usr/bin:/bin" : req.path_env, ':'))
      candidates.push_back((dir.empty() ? "." : dir) + "/" + prog);
  }
  std::vector<char*> argv, envp, paths;
  for (const std::string& a : req.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const std::string& e : req.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  for (const std::string& c : candidates) paths.push_back(const_cast<char*>(c.c_str()));
  cpu_set_t mask;
  CPU_ZERO(&mask);
  for (int c : req.cpus)
    if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &mask);
  const bool bind = !req.cpus.empty();

  int out_pipe[2], err_pipe[2], exec_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    res.error = "pipe: " + errno_text(errno);
    return res;
  }
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    res.error = "pipe: " + errno_text(errno);
    close(out_pipe[0]);
    close(out_pipe[1]);
    return res;
  }
  if (pipe2(exec_pipe, O_CLOEXEC) != 0) {
    res.error = "pipe: " + errno_text(errno);
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) close(fd);
    return res;
  }
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = getpid();

  pid_t pid = fork();
  if (pid == 0) {
    // Child. Own session and process group, so the launcher can signal the worker with everything
    // it starts, and terminal signals reach it only through the launcher.
    setsid();
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(128 + SIGKILL);  // the launcher died before prctl took effect
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; ++s) sigaction(s, &dfl, nullptr);  // undo the launcher's SIG_IGN (SIGPIPE)
    if (bind) sched_setaffinity(0, sizeof mask, &mask);
    if (devnull >= 0) dup2(devnull, 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    int err = ENOENT;
    for (char* path : paths) {
      execve(path, argv.data(), envp.data());
      if (errno == EACCES || errno == ENOEXEC) err = errno;       // remember, keep searching
      else if (errno != ENOENT && errno != ENOTDIR) { err = errno; break; }
    }
    write_all_raw(exec_pipe[1], &err, sizeof err);
    _exit(err == ENOENT || err == ENOTDIR ? 127 : 126);
  }
  if (devnull >= 0) close(devnull);
  close(out_pipe[1]);
  close(err_pipe[1]);
  close(exec_pipe[1]);
  if (pid < 0) {
    res.error = "fork: " + errno_text(errno);
    close(out_pipe[0]);
    close(err_pipe[0]);
    close(exec_pipe[0]);
    return res;
  }
  // Blocks only until the child's exec succeeds (close-on-exec gives EOF) or fails (errno arrives).
  int child_errno = 0;
  ssize_t n;
  do {
    n = read(exec_pipe[0], &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  close(exec_pipe[0]);
  res.pid = pid;
  res.exec_errno = n == static_cast<ssize_t>(sizeof child_errno) ? child_errno : 0;
  res.out_fd = out_pipe[0];
  res.err_fd = err_pipe[0];
  set_nonblocking(res.out_fd);
  set_nonblocking(res.err_fd);
  return res;
}

void signal_group(pid_t pgid, int sig) {
  if (pgid > 1) kill(-pgid, sig);
}

std::vector<pid_t> list_children(const std::set<pid_t>& keep) {
  std::vector<pid_t> out;
  const pid_t self = getpid();
  DIR* d = opendir("/proc");
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    long long pid = 0;
    if (!parse_int(e->d_name, &pid)) continue;
    std::string stat;
    if (!read_text_file("/proc/" + std::string(e->d_name) + "/stat", &stat)) continue;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses, so parse after the last ')'.
    size_t rp = stat.rfind(')');
    if (rp == std::string::npos) continue;
    std::vector<std::string> fields = split(trim(stat.substr(rp + 1)), ' ');
    long long ppid = 0;
    if (fields.size() < 2 || !parse_int(fields[1], &ppid)) continue;
    if (ppid == self && !keep.count(static_cast<pid_t>(pid))) out.push_back(static_cast<pid_t>(pid));
  }
  closedir(d);
  return out;
}

void become_subreaper() { prctl(PR_SET_CHILD_SUBREAPER, 1); }

void sweep_children(const std::set<pid_t>& keep, double max_seconds) {
  const double deadline = mono_now() + max_seconds;
  for (;;) {
    std::vector<pid_t> kids = list_children(keep);
    if (kids.empty()) return;
    for (pid_t p : kids) {
      kill(p, SIGKILL);
      pid_t pg = getpgid(p);
      if (pg == p) signal_group(p, SIGKILL);  // a group leader: take its group with it
    }
    for (pid_t p : kids) {
      while (waitpid(p, nullptr, WNOHANG) == 0 && mono_now() < deadline) usleep(2000);
    }
    if (mono_now() >= deadline) return;
  }
}

bool Guardian::start(const std::string& temp_dir) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return false;
  pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return false;
  }
  if (pid == 0) {
    // The guardian: survives the launcher (no parent-death signal), ignores terminal signals.
    setpgid(0, 0);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU})
      signal(s, SIG_IGN);
    close(fds[1]);  // otherwise the guardian would keep its own pipe open and never see EOF
    int devnull = open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 1024; ++fd)  // e.g. the console pipe a caller waits on for EOF
      if (fd != fds[0] && fd != devnull) close(fd);
    if (devnull >= 0) {
      dup2(devnull, 0);
      dup2(devnull, 1);
      dup2(devnull, 2);
    }
    std::set<pid_t> groups;
    std::string buf;
    char chunk[512];
    bool clean = false;
    for (;;) {
      ssize_t n = read(fds[0], chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      buf.append(chunk, static_cast<size_t>(n));
      size_t nl;
      while ((nl = buf.find('\n')) != std::string::npos) {
        std::string line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        long long v = 0;
        if (line == "q") clean = true;
        else if (line.size() > 1 && parse_int(line.substr(1), &v) && v > 1) {
          if (line[0] == '+') groups.insert(static_cast<pid_t>(v));
          else groups.erase(static_cast<pid_t>(v));
        }
      }
      if (clean) break;
    }
    if (!clean) {
      for (pid_t g : groups) kill(-g, SIGKILL);
      if (!temp_dir.empty()) remove_tree(temp_dir);
    }
    _exit(0);
  }
  close(fds[0]);
  pid_ = pid;
  fd_ = fds[1];
  return true;
}

void Guardian::send(const std::string& line) {
  if (fd_ >= 0) write_all_raw(fd_, line.data(), line.size());
}

void Guardian::watch(pid_t pgid) { send("+" + std::to_string(pgid) + "\n"); }
void Guardian::forget(pid_t pgid) { send("-" + std::to_string(pgid) + "\n"); }

void Guardian::quit() {
  send("q\n");
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  if (pid_ > 0) {
    const double deadline = mono_now() + 2;
    while (waitpid(pid_, nullptr, WNOHANG) == 0 && mono_now() < deadline) usleep(1000);
  }
  pid_ = -1;
}

}  // namespace dl
