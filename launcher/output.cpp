#include "output.hpp"

#include <unistd.h>

#include <cerrno>

namespace dl {

namespace {
Console* g_console = nullptr;
constexpr size_t kTailLines = 20;
constexpr size_t kTailWidth = 400;

void write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // console gone (EPIPE, closed): drop output, keep supervising
    off += static_cast<size_t>(n);
  }
}
}  // namespace

void Console::start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_) return;
  started_ = true;
  stopping_ = false;
  thread_ = std::thread([this] { run(); });
}

void Console::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  started_ = false;
}

void Console::write(int fd, std::string text) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_) {
      write_all(fd, text);  // before start / after stop: write directly
      return;
    }
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
        if (!buf.empty()) write_all(buf_fd, buf);
        buf.clear();
        buf_fd = item.first;
      }
      buf += item.second;
      done += item.second.size();
    }
    if (!buf.empty()) write_all(buf_fd, buf);
    lock.lock();
    bytes_ -= done;
  }
}

void set_log_console(Console* console) { g_console = console; }

void log_line(const std::string& msg) {
  std::string text = "[detlite-launch] " + msg + "\n";
  if (g_console) g_console->write(2, std::move(text));
  else write_all(2, text);
}

void Tail::add(const std::string& line) {
  lines_.push_back(line.size() > kTailWidth ? line.substr(0, kTailWidth) + "..." : line);
  while (lines_.size() > kTailLines) lines_.pop_front();
}

std::string Tail::text() const {
  std::string out;
  for (const std::string& l : lines_) {
    if (!out.empty()) out += '\n';
    out += l;
  }
  return out;
}

}  // namespace dl

