// The launcher's console: whole lines on stdout/stderr, written by one thread, so lines from
// different ranks never interleave mid-line. (Worker output is read and prefixed in agent.cpp.)
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
  std::thread thread_;
};

// Launcher messages on stderr, through the console so they stay whole and ordered.
void set_log_console(Console* console);
void log_line(const std::string& msg);
void log_lines(const std::string& text);  // each non-empty line of text

}  // namespace dl
