#include "plane.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <unistd.h>
#include <cctype>
#include <cerrno>
#include <cstring>

namespace dl {
namespace {
std::string pct_encode(const std::string& s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || (c && std::strchr("._-:/,@+", c))) out += static_cast<char>(c);
    else out += {'%', kHex[c >> 4], kHex[c & 15]};
  }
  return out;
}

bool pct_decode(const std::string& s, std::string* out) {
  out->clear();
  for (size_t i = 0; i < s.size(); ++i) {
    const std::string hex = s[i] == '%' ? s.substr(i + 1, 2) : "";
    if (s[i] == '%' && (hex.size() != 2 || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos))
      return false;
    *out += s[i] == '%' ? static_cast<char>(std::stoi(hex, nullptr, 16)) : s[i];
    i += hex.size();
  }
  return true;
}
}  // namespace

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

std::string encode_msg(const Msg& m) {
  std::string out = pct_encode(m.type);
  for (const auto& p : m.kv) out += " " + pct_encode(p.first) + "=" + pct_encode(p.second);
  return out + "\n";
}

bool decode_msg(const std::string& line, Msg* out) {
  *out = Msg{};
  const std::vector<std::string> parts = split(line, ' ');
  if (parts[0].empty() || !pct_decode(parts[0], &out->type)) return false;
  for (size_t i = 1; i < parts.size(); ++i) {
    const size_t eq = parts[i].find('=');
    std::string k, v;
    if (eq == std::string::npos || !pct_decode(parts[i].substr(0, eq), &k) || !pct_decode(parts[i].substr(eq + 1), &v))
      return false;
    out->kv.emplace_back(k, v);
  }
  return true;
}

bool resolve(const std::string& host, int port, sockaddr_storage* addr, socklen_t* len, std::string* error) {
  auto* a = reinterpret_cast<sockaddr_in*>(addr);
  *a = sockaddr_in{};
  a->sin_family = AF_INET;
  a->sin_port = htons(static_cast<uint16_t>(port));
  *len = sizeof(sockaddr_in);
  if (host.empty()) return true;  // INADDR_ANY
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  const int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0 || !res) return fail(error, "cannot resolve '" + host + "': " + gai_strerror(rc));
  addrinfo* pick = res;  // prefer IPv4 (what MASTER_ADDR usually names), else the first answer
  while (pick->ai_family != AF_INET && pick->ai_next) pick = pick->ai_next;
  if (pick->ai_family != AF_INET) pick = res;
  std::memcpy(addr, pick->ai_addr, pick->ai_addrlen);
  *len = pick->ai_addrlen;
  freeaddrinfo(res);
  return true;
}

int open_socket(const std::string& host, int port, sockaddr_storage* addr, socklen_t* len, std::string* error) {
  if (!resolve(host, port, addr, len, error)) return -1;
  const int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) *error = "socket: " + errno_text(errno);
  return fd;
}

int listen_on(const std::string& host, int port, std::string* error) {
  sockaddr_storage addr{};
  socklen_t len = 0;
  const int fd = open_socket(host, port, &addr, &len, error);
  int one = 1;
  if (fd < 0) return -1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) == 0 && ::listen(fd, 128) == 0) return fd;
  *error = errno_text(errno);
  ::close(fd);
  return -1;
}

int probe_port(int port) {
  std::string err;
  const int fd = listen_on("", port, &err);
  sockaddr_in addr{};
  socklen_t len = sizeof addr;
  const bool ok = fd >= 0 && getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  if (fd >= 0) ::close(fd);
  return ok ? ntohs(addr.sin_port) : 0;
}
}  // namespace dl
