// What the launcher's parts share: clocks, strings, numbers, files, JSON text, signals, the console
// with the launcher's own log lines, and the interface of every part of the poll loop.
#pragma once

#include <poll.h>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace dl {
using EnvMap = std::map<std::string, std::string>;  // the environment, taken once at start-up
std::string env_get(const EnvMap& env, const std::string& key, const std::string& fallback = "");

// Seconds on the monotonic clock (for deadlines) and on the wall clock (for reports across nodes).
double mono_now();
double wall_now();
constexpr double kNever = 1e18;  // a deadline that does not come

std::vector<std::string> split(const std::string& s, char sep);
std::string trim(const std::string& s);
bool starts_with(const std::string& s, const std::string& prefix);
std::string to_lower(std::string s);
std::string fmt_num(double v, const char* format = "%g");  // "%g": how durations appear in messages
// Strict number parsing: the whole string must be the number.
bool parse_int(const std::string& s, long long* out, int base = 10);
bool parse_double(const std::string& s, double* out);

// The one write loop: retries on EINTR and short writes; false when the fd refuses (EPIPE, closed).
bool write_all(int fd, const void* data, size_t len);
bool read_text_file(const std::string& path, std::string* out);
bool make_dirs(const std::string& path);                  // mkdir -p
std::vector<std::string> list_dir(const std::string& path);  // sorted, without "." and ".."

std::string json_escape(const std::string& s);                 // with the surrounding quotes
std::string json_list(const std::vector<std::string>& items);  // ["a", "b"], items escaped
std::string signal_name(int sig);                              // "SIGTERM", or "signal 42"
int signal_from_name(const std::string& name);                 // 0 when unknown
std::string errno_text(int err);
inline bool fail(std::string* error, const std::string& msg) {  // for `return fail(error, "...")`
  *error = msg;
  return false;
}

// The single writer of the launcher's stdout/stderr, so that lines from different ranks never interleave
// mid-line (worker output is read and prefixed in agent.cpp). Producers enqueue whole lines and never block;
// the event loop stops reading worker pipes while pending() is large (back-pressure) so a slow console
// throttles the workers instead of the launcher's heartbeats.
class Console {
 public:
  void start();  // from then on also the way of log_line's messages
  void stop();   // flushes everything queued, then joins the thread
  void write(int fd, std::string text);
  size_t pending() const;

 private:
  void run();
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<int, std::string>> queue_;
  size_t bytes_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

// Launcher messages on stderr, through the started console so they stay whole and ordered.
void log_line(const std::string& msg);
void log_lines(const std::string& text);  // each non-empty line of text

// A part of the launcher's single-threaded event loop (signals, control plane, agent, coordinator).
// Each turn the loop ticks every part, collects their file descriptors, polls until the earliest
// deadline and hands each part back the entries it added.
class Pollable {
 public:
  virtual ~Pollable() = default;
  virtual void add_pollfds(std::vector<pollfd>* /*fds*/) {}
  virtual void on_poll(const pollfd* /*fds*/, size_t /*n*/) {}
  virtual void tick(double /*now*/) {}
  virtual double next_deadline(double /*now*/) const { return kNever; }
};
}  // namespace dl
