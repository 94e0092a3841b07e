#include "util.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace dl {
namespace {
const std::pair<int, const char*> kSignals[] = {
    {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},   {SIGTRAP, "SIGTRAP"},
    {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},   {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"},
    {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"}, {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"},
    {SIGCHLD, "SIGCHLD"}, {SIGCONT, "SIGCONT"}, {SIGSTOP, "SIGSTOP"}, {SIGTSTP, "SIGTSTP"}, {SIGXCPU, "SIGXCPU"},
    {SIGXFSZ, "SIGXFSZ"}, {SIGSYS, "SIGSYS"},
};

template <typename Clock>
double clock_seconds() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

template <typename T, typename Convert>
bool parse_whole(const std::string& s, T* out, Convert convert) {
  errno = 0;
  char* end = nullptr;
  const T v = convert(s.c_str(), &end);
  if (s.empty() || errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

Console* g_console = nullptr;
}  // namespace

double mono_now() { return clock_seconds<std::chrono::steady_clock>(); }
double wall_now() { return clock_seconds<std::chrono::system_clock>(); }

std::string env_get(const EnvMap& env, const std::string& key, const std::string& fallback) {
  auto it = env.find(key);
  return it == env.end() ? fallback : it->second;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts(1);
  for (char c : s) {
    if (c == sep) parts.emplace_back();
    else parts.back() += c;
  }
  return parts;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

std::string to_lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string fmt_num(double v, const char* format) {
  char b[64];
  std::snprintf(b, sizeof b, format, v);
  return b;
}

bool parse_int(const std::string& s, long long* out, int base) {
  return parse_whole(s, out, [base](const char* p, char** end) { return std::strtoll(p, end, base); });
}

bool parse_double(const std::string& s, double* out) {
  return parse_whole(s, out, [](const char* p, char** end) { return std::strtod(p, end); });
}

bool write_all(int fd, const void* data, size_t len) {
  for (const char* p = static_cast<const char*>(data); len > 0;) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool read_text_file(const std::string& path, std::string* out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  out->clear();
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR);)
    if (n > 0) out->append(buf, static_cast<size_t>(n));
  ::close(fd);
  return true;
}

bool make_dirs(const std::string& path) {
  if (path.empty()) return false;
  for (size_t i = 1; i <= path.size(); ++i)
    if (i == path.size() || path[i] == '/')
      if (::mkdir(path.substr(0, i).c_str(), 0755) != 0 && errno != EEXIST) return false;
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string> list_dir(const std::string& path) {
  std::vector<std::string> names;
  DIR* d = ::opendir(path.c_str());
  while (dirent* e = d ? ::readdir(d) : nullptr)
    if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") names.push_back(e->d_name);
  if (d) ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::string json_escape(const std::string& s) {
  static const std::string kSpecial = "\"\\\n\r\t", kLetter = "\"\\nrt";
  std::string out = "\"";
  for (unsigned char c : s) {
    const size_t k = kSpecial.find(static_cast<char>(c));
    char buf[8] = {static_cast<char>(c), 0};
    if (k == std::string::npos && (c < 0x20 || c == 0x7f)) std::snprintf(buf, sizeof buf, "\\u%04x", c);
    if (k != std::string::npos) out += {'\\', kLetter[k]};
    else out += buf;
  }
  return out + "\"";
}

std::string json_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + json_escape(items[i]);
  return out + "]";
}

std::string signal_name(int sig) {
  for (const auto& s : kSignals)
    if (s.first == sig) return s.second;
  return "signal " + std::to_string(sig);
}

int signal_from_name(const std::string& raw) {
  std::string name = to_lower(trim(raw));
  if (!starts_with(name, "sig")) name = "sig" + name;
  for (const auto& s : kSignals)
    if (name == to_lower(s.second)) return s.first;
  return 0;
}

std::string errno_text(int err) { return std::strerror(err); }

void Console::start() {
  thread_ = std::thread([this] { run(); });
  g_console = this;
}

void Console::stop() {
  g_console = nullptr;
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Console::write(int fd, std::string text) {
  std::lock_guard<std::mutex> lock(mu_);
  bytes_ += text.size();
  queue_.emplace_back(fd, std::move(text));
  cv_.notify_one();
}

size_t Console::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

void Console::run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty() && stopping_) return;
    const std::deque<std::pair<int, std::string>> batch = std::exchange(queue_, {});
    lock.unlock();
    // Coalesce consecutive lines for the same fd into one write (up to about 1 MiB); each item is whole lines.
    std::string buf;
    size_t done = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      buf += batch[i].second;
      done += batch[i].second.size();
      if (i + 1 == batch.size() || batch[i + 1].first != batch[i].first || buf.size() > (1u << 20)) {
        write_all(batch[i].first, buf.data(), buf.size());  // a console that is gone (EPIPE) loses the output
        buf.clear();
      }
    }
    lock.lock();
    bytes_ -= done;
  }
}

void log_line(const std::string& msg) {
  std::string text = "[detlite-launch] " + msg + "\n";
  if (g_console) g_console->write(2, std::move(text));
  else write_all(2, text.data(), text.size());
}

void log_lines(const std::string& text) {
  for (const std::string& line : split(text, '\n'))
    if (!line.empty()) log_line(line);
}
}  // namespace dl
