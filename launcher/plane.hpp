// The control plane between launchers: one text line per message ("TYPE key=value ..." with values
// percent-encoded; wire.cpp) over TCP, on non-blocking sockets driven by the launcher's poll loop.
// Node 0 runs a hub: it accepts the other launchers, checks their HELLO with the coordinator, relays
// messages both ways and declares nodes lost (closed connection or missed heartbeats). Every other
// node runs an uplink: it connects to node 0 with retries until the rendezvous timeout, introduces
// itself, relays messages to and from the local agent and reports node 0's loss (plane.cpp).
#pragma once

#include <sys/socket.h>
#include <memory>

#include "util.hpp"

namespace dl {
constexpr int kProtocolVersion = 1;
constexpr const char* kProtocolName = "detlite-launch";

struct Msg {
  std::string type;
  std::vector<std::pair<std::string, std::string>> kv;  // in the order set (each key is set once)

  Msg() = default;
  explicit Msg(std::string t) : type(std::move(t)) {}
  Msg& set(const std::string& key, const std::string& value) {
    kv.emplace_back(key, value);
    return *this;
  }
  Msg& set(const std::string& key, long long value) { return set(key, std::to_string(value)); }
  Msg& set_num(const std::string& key, double value) { return set(key, fmt_num(value, "%.6f")); }
  std::string get(const std::string& key, const std::string& fallback = "") const;
  long long get_int(const std::string& key, long long fallback = 0) const;
  double get_num(const std::string& key, double fallback = 0) const;
};

std::string encode_msg(const Msg& m);                // one line, with '\n'
bool decode_msg(const std::string& line, Msg* out);  // line without '\n'; false when malformed

// A non-blocking, close-on-exec TCP socket for host:port (host: a name or numeric, IPv4 or IPv6;
// empty: every interface), with that address in *addr; -1 with *error.
int open_socket(const std::string& host, int port, sockaddr_storage* addr, socklen_t* len, std::string* error);
// Resolves host and port as open_socket does, without a socket.
bool resolve(const std::string& host, int port, sockaddr_storage* addr, socklen_t* len, std::string* error);
// Listens on host:port (SO_REUSEADDR); -1 with the reason in *error.
int listen_on(const std::string& host, int port, std::string* error);

// Listens on every interface for a moment, with SO_REUSEADDR as the store does: the port it got
// (for port 0 a free one chosen by the kernel), or 0 when the port cannot be bound.
int probe_port(int port);

struct Options;
class Agent;
class Coordinator;

// This node's end of the control plane: node 0's hub (to every other node) or another node's uplink (to node 0 only).
class Plane : public Pollable {
 public:
  virtual void send(int node, const Msg& m) = 0;  // the uplink drops it until node 0 welcomed it
  // The hub, after the result went out: flush, half-close, and wait (bounded) for the peers to close,
  // so that closing with unread data cannot reset a connection before a peer has read the result.
  virtual void linger(double /*seconds*/) {}
};
// Listens on --local-addr, else on a numeric rdzv host, else everywhere; null with *error on failure.
std::unique_ptr<Plane> start_hub(const Options* opt, Coordinator* coord, std::string* error);
std::unique_ptr<Plane> start_uplink(const Options* opt, Agent* agent, std::string hostname);
}  // namespace dl
