#include "output.hpp"

#include "util.hpp"

namespace dl {

namespace {
Console* g_console = nullptr;

// A console that is gone (EPIPE, closed) loses the output; the launcher keeps supervising.
void write_text(int fd, const std::string& s) { write_all(fd, s.data(), s.size()); }
}  // namespace

void Console::start() { thread_ = std::thread([this] { run(); }); }

void Console::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Console::write(int fd, std::string text) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    bytes_ += text.size();
    queue_.emplace_back(fd, std::move(text));
  }
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
    std::deque<std::pair<int, std::string>> batch;
    batch.swap(queue_);
    lock.unlock();
    // Coalesce consecutive lines for the same fd into one write; each item is whole lines.
    std::string buf;
    int buf_fd = -1;
    size_t done = 0;
    for (auto& item : batch) {
      if (item.first != buf_fd || buf.size() > (1u << 20)) {
        if (!buf.empty()) write_text(buf_fd, buf);
        buf.clear();
        buf_fd = item.first;
      }
      buf += item.second;
      done += item.second.size();
    }
    if (!buf.empty()) write_text(buf_fd, buf);
    lock.lock();
    bytes_ -= done;
  }
}

void set_log_console(Console* console) { g_console = console; }

void log_line(const std::string& msg) {
  std::string text = "[detlite-launch] " + msg + "\n";
  if (g_console) g_console->write(2, std::move(text));
  else write_text(2, text);
}

void log_lines(const std::string& text) {
  for (const std::string& line : split(text, '\n'))
    if (!line.empty()) log_line(line);
}

}  // namespace dl
