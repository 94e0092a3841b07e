#include "control.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "util.hpp"

namespace dl {

namespace {

bool plain_char(unsigned char c) {
  return std::isalnum(c) || c == '.' || c == '_' || c == '-' || c == ':' || c == '/' || c == ',' || c == '@' ||
         c == '+';
}

std::string pct_encode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (plain_char(c)) {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

bool pct_decode(const std::string& s, std::string* out) {
  out->clear();
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      *out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return false;
    int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
    if (hi < 0 || lo < 0) return false;
    *out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return true;
}

constexpr size_t kMaxLine = 1 << 20;

void set_socket_options(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  fcntl(fd, F_SETFD, FD_CLOEXEC);
}

}  // namespace

Msg& Msg::set(const std::string& key, const std::string& value) {
  for (auto& p : kv)
    if (p.first == key) {
      p.second = value;
      return *this;
    }
  kv.emplace_back(key, value);
  return *this;
}

Msg& Msg::set_num(const std::string& key, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6f", value);
  return set(key, std::string(buf));
}

std::string Msg::get(const std::string& key, const std::string& fallback) const {
  for (const auto& p : kv)
    if (p.first == key) return p.second;
  return fallback;
}

long long Msg::get_int(const std::string& key, long long fallback) const {
  long long v = 0;
  return parse_int(get(key), &v) ? v : fallback;
}

double Msg::get_num(const std::string& key, double fallback) const {
  double v = 0;
  return parse_double(get(key), &v) ? v : fallback;
}

bool Msg::has(const std::string& key) const {
  for (const auto& p : kv)
    if (p.first == key) return true;
  return false;
}

std::string encode_msg(const Msg& m) {
  std::string out = pct_encode(m.type);
  for (const auto& p : m.kv) out += " " + pct_encode(p.first) + "=" + pct_encode(p.second);
  return out + "\n";
}

bool decode_msg(const std::string& line, Msg* out) {
  *out = Msg{};
  std::vector<std::string> parts = split(line, ' ');
  if (parts.empty() || parts[0].empty()) return false;
  if (!pct_decode(parts[0], &out->type)) return false;
  for (size_t i = 1; i < parts.size(); ++i) {
    size_t eq = parts[i].find('=');
    if (eq == std::string::npos) return false;
    std::string k, v;
    if (!pct_decode(parts[i].substr(0, eq), &k) || !pct_decode(parts[i].substr(eq + 1), &v)) return false;
    out->kv.emplace_back(k, v);
  }
  return true;
}

Conn::Conn(int fd) : fd_(fd) {
  set_socket_options(fd);
  last_heard = last_sent = mono_now();
}

Conn::~Conn() {
  if (fd_ >= 0) ::close(fd_);
}

void Conn::fail(const std::string& why) {
  if (!closed_) {
    closed_ = true;
    reason_ = why;
  }
}

void Conn::send(const Msg& m) {
  if (closed_) return;
  out_ += encode_msg(m);
  last_sent = mono_now();
  on_writable();
}

void Conn::on_writable() {
  while (!out_.empty() && !closed_) {
    ssize_t n = ::send(fd_, out_.data(), out_.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {
      fail(std::string("send: ") + errno_text(errno));
      return;
    }
    out_.erase(0, static_cast<size_t>(n));
  }
}

void Conn::on_readable(std::vector<Msg>* msgs) {
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) {
      fail(std::string("recv: ") + errno_text(errno));
      break;
    }
    if (n == 0) {
      fail("connection closed by peer");
      break;
    }
    in_.append(buf, static_cast<size_t>(n));
    if (in_.size() > kMaxLine && in_.find('\n') == std::string::npos) {
      fail("oversized message");
      break;
    }
  }
  size_t start = 0, nl;
  while ((nl = in_.find('\n', start)) != std::string::npos) {
    Msg m;
    if (!decode_msg(in_.substr(start, nl - start), &m)) {
      fail("malformed message");
      break;
    }
    last_heard = mono_now();
    msgs->push_back(std::move(m));
    start = nl + 1;
  }
  in_.erase(0, start);
}

bool is_numeric_ip(const std::string& host) {
  in6_addr a6;
  in_addr a4;
  return inet_pton(AF_INET, host.c_str(), &a4) == 1 || inet_pton(AF_INET6, host.c_str(), &a6) == 1;
}

bool resolve(const std::string& host, int port, sockaddr_storage* addr, socklen_t* len, std::string* error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (host.empty()) hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  std::string service = std::to_string(port);
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0 || !res) {
    *error = "cannot resolve '" + host + "': " + gai_strerror(rc);
    return false;
  }
  // Prefer IPv4 (what MASTER_ADDR usually names), else the first answer.
  addrinfo* pick = res;
  for (addrinfo* p = res; p; p = p->ai_next)
    if (p->ai_family == AF_INET) {
      pick = p;
      break;
    }
  std::memcpy(addr, pick->ai_addr, pick->ai_addrlen);
  *len = pick->ai_addrlen;
  freeaddrinfo(res);
  return true;
}

int listen_on(const std::string& host, int port, std::string* error) {
  sockaddr_storage addr{};
  socklen_t len = 0;
  if (host.empty()) {
    auto* a = reinterpret_cast<sockaddr_in*>(&addr);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_ANY);
    a->sin_port = htons(static_cast<uint16_t>(port));
    len = sizeof(sockaddr_in);
  } else if (!resolve(host, port, &addr, &len, error)) {
    return -1;
  }
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    *error = "socket: " + errno_text(errno);
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(fd, 128) != 0) {
    *error = errno_text(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

int start_connect(const std::string& host, int port, const std::string& local_addr, std::string* error,
                  bool* fatal) {
  *fatal = false;
  sockaddr_storage addr{};
  socklen_t len = 0;
  if (!resolve(host, port, &addr, &len, error)) return -1;
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    *error = "socket: " + errno_text(errno);
    return -1;
  }
  if (!local_addr.empty()) {
    sockaddr_storage la{};
    socklen_t llen = 0;
    if (!resolve(local_addr, 0, &la, &llen, error) || bind(fd, reinterpret_cast<sockaddr*>(&la), llen) != 0) {
      if (error->empty()) *error = "cannot bind to --local-addr " + local_addr + ": " + errno_text(errno);
      *fatal = true;
      ::close(fd);
      return -1;
    }
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 && errno != EINPROGRESS) {
    *error = errno_text(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

int connect_result(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}

int pick_free_port(const std::string& host) {
  std::string err;
  int fd = listen_on(host, 0, &err);
  if (fd < 0) return 0;
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  int port = 0;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    if (addr.ss_family == AF_INET) port = ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    else if (addr.ss_family == AF_INET6) port = ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  }
  ::close(fd);
  return port;
}

bool port_is_free(const std::string& host, int port) {
  std::string err;
  int fd = listen_on(host, port, &err);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

}  // namespace dl
