// Control plane between launchers: one text line per message ("TYPE key=value ..." with values
// percent-encoded) over TCP, non-blocking sockets driven by the launcher's poll loop.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <string>
#include <utility>
#include <vector>

namespace dl {

constexpr int kProtocolVersion = 1;
constexpr const char* kProtocolName = "detlite-launch";

struct Msg {
  std::string type;
  std::vector<std::pair<std::string, std::string>> kv;

  Msg() = default;
  explicit Msg(std::string t) : type(std::move(t)) {}
  Msg& set(const std::string& key, const std::string& value);
  Msg& set(const std::string& key, long long value) { return set(key, std::to_string(value)); }
  Msg& set_num(const std::string& key, double value);
  std::string get(const std::string& key, const std::string& fallback = "") const;
  long long get_int(const std::string& key, long long fallback = 0) const;
  double get_num(const std::string& key, double fallback = 0) const;
  bool has(const std::string& key) const;
};

std::string encode_msg(const Msg& m);                  // one line, with '\n'
bool decode_msg(const std::string& line, Msg* out);    // line without '\n'

// One TCP connection with buffered, non-blocking I/O.
class Conn {
 public:
  explicit Conn(int fd);
  ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  int fd() const { return fd_; }
  void send(const Msg& m);
  bool wants_write() const { return !out_.empty(); }
  void on_writable();
  // Reads what is available; appends complete messages. Sets closed() on EOF / error / garbage.
  void on_readable(std::vector<Msg>* msgs);
  bool closed() const { return closed_; }
  const std::string& close_reason() const { return reason_; }
  double last_heard = 0;  // mono time of the last message received
  double last_sent = 0;   // mono time of the last message queued

 private:
  void fail(const std::string& why);
  int fd_;
  std::string in_, out_;
  bool closed_ = false;
  std::string reason_;
};

// Resolves host (name or numeric, IPv4 or IPv6) and port.
bool resolve(const std::string& host, int port, sockaddr_storage* addr, socklen_t* len, std::string* error);
bool is_numeric_ip(const std::string& host);

// Non-blocking listening socket on host:port (host empty: all interfaces).
int listen_on(const std::string& host, int port, std::string* error);

// Starts a non-blocking connect (binding to local_addr first when given). Returns the fd, or -1 with
// *fatal set when retrying cannot help (local_addr is not an address of this host).
int start_connect(const std::string& host, int port, const std::string& local_addr, std::string* error,
                  bool* fatal);
// After POLLOUT on a connecting socket: 0 when connected, else the errno.
int connect_result(int fd);

// A port on which a TCP server can listen on this host now (0 on failure), chosen by the kernel.
int pick_free_port(const std::string& host);
// Whether host:port can be bound right now (with SO_REUSEADDR, as the store does).
bool port_is_free(const std::string& host, int port);

}  // namespace dl
