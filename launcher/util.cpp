#include "util.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace dl {

namespace {

const std::pair<int, const char*> kSignals[] = {
    {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},
    {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},
    {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
    {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"}, {SIGCHLD, "SIGCHLD"},
    {SIGCONT, "SIGCONT"}, {SIGSTOP, "SIGSTOP"}, {SIGTSTP, "SIGTSTP"}, {SIGXCPU, "SIGXCPU"},
    {SIGXFSZ, "SIGXFSZ"}, {SIGSYS, "SIGSYS"},
};

double clock_seconds(clockid_t id) {
  timespec ts{};
  clock_gettime(id, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

template <typename T, typename Convert>
bool parse_whole(const std::string& s, T* out, Convert convert) {
  errno = 0;
  char* end = nullptr;
  const T v = convert(s.c_str(), &end);
  if (s.empty() || errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

}  // namespace

double mono_now() { return clock_seconds(CLOCK_MONOTONIC); }
double wall_now() { return clock_seconds(CLOCK_REALTIME); }

std::string env_get(const EnvMap& env, const std::string& key, const std::string& fallback) {
  auto it = env.find(key);
  return it == env.end() ? fallback : it->second;
}

bool env_has(const EnvMap& env, const std::string& key) { return env.count(key) != 0; }

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

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

std::string to_lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string fmt_num(double v, const char* format) {
  char b[64];
  std::snprintf(b, sizeof b, format, v);
  return b;
}

bool parse_int(const std::string& s, long long* out) {
  return parse_whole(s, out, [](const char* p, char** end) { return std::strtoll(p, end, 10); });
}

bool parse_double(const std::string& s, double* out) {
  return parse_whole(s, out, [](const char* p, char** end) { return std::strtod(p, end); });
}

bool write_all(int fd, const void* data, size_t len) {
  const char* p = static_cast<const char*>(data);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool read_text_file(const std::string& path, std::string* out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  out->clear();
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out->append(buf, static_cast<size_t>(n));
  }
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
  std::string name = trim(raw);
  for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (!starts_with(name, "SIG")) name = "SIG" + name;
  for (const auto& s : kSignals)
    if (name == s.second) return s.first;
  return 0;
}

std::string errno_text(int err) { return std::strerror(err); }

}  // namespace dl
