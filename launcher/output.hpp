// Worker output: whole lines with a rank prefix on the console (written by one thread, so lines from
// different ranks never interleave mid-line), raw bytes to per-rank log files, and a short tail of
// every worker's last lines for failure reports.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

namespace dl {

// The single writer of the launcher's stdout/stderr. Producers enqueue whole lines and never block;
// the event loop stops reading worker pipes while pending() is large (back-pressure) so a slow
// console throttles the workers instead of the launcher's heartbeats.
class Console {
 public:
  void start();
  void stop();  // flushes everything queued, then joins the thread
  void write(int fd, std::string text);
  size_t pending() const;

 private:
  void run();
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<int, std::string>> queue_;
  size_t bytes_ = 0;
  bool stopping_ = false;
  bool started_ = false;
  std::thread thread_;
};

// Launcher messages on stderr, through the console so they stay whole and ordered.
void set_log_console(Console* console);
void log_line(const std::string& msg);

// Splits a byte stream into lines. A line longer than max_line is emitted in pieces of max_line
// bytes (each piece becomes a whole console line), so memory stays bounded.
class LineSplitter {
 public:
  explicit LineSplitter(size_t max_line = 64 * 1024) : max_line_(max_line) {}
  template <typename F>
  void feed(const char* data, size_t len, F&& emit) {
    partial_.append(data, len);
    size_t start = 0;
    for (;;) {
      size_t nl = partial_.find('\n', start);
      if (nl == std::string::npos) break;
      emit(partial_.substr(start, nl - start));
      start = nl + 1;
    }
    partial_.erase(0, start);
    while (partial_.size() >= max_line_) {
      emit(partial_.substr(0, max_line_));
      partial_.erase(0, max_line_);
    }
  }
  template <typename F>
  void finish(F&& emit) {
    if (!partial_.empty()) emit(partial_);
    partial_.clear();
  }

 private:
  size_t max_line_;
  std::string partial_;
};

// The last few lines of a worker's output (both streams), each cut to a readable length.
class Tail {
 public:
  void add(const std::string& line);
  std::string text() const;  // lines joined with '\n'

 private:
  std::deque<std::string> lines_;
};

}  // namespace dl
