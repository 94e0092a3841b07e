// The control plane between launchers: one text line per message ("TYPE key=value ..." with values
// percent-encoded) over TCP, on non-blocking sockets driven by the launcher's poll loop.
// Node 0 runs a Hub: it accepts the other launchers, checks their HELLO with the coordinator, relays
// messages both ways and declares nodes lost (closed connection or missed heartbeats). Every other
// node runs an Uplink: it connects to node 0 with retries until the rendezvous timeout, introduces
// itself, relays messages to and from the local agent and reports node 0's loss.
#pragma once

#include <memory>

#include "util.hpp"

namespace dl {

struct Options;
class Agent;
class Coordinator;

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

// Listens on every interface for a moment, with SO_REUSEADDR as the store does: the port it got
// (for port 0 a free one chosen by the kernel), or 0 when the port cannot be bound.
int probe_port(int port);

class Hub : public Pollable {
 public:
  virtual void send(int node, const Msg& m) = 0;
  // After the result went out: flush, half-close, and wait (bounded) for the peers to close, so that
  // closing with unread data cannot reset a connection before a peer has read the result.
  virtual void linger(double seconds) = 0;
};
// Listens on --local-addr, else on a numeric rdzv host, else everywhere; null with *error on failure.
std::unique_ptr<Hub> start_hub(const Options* opt, Coordinator* coord, std::string* error);

class Uplink : public Pollable {
 public:
  virtual void send(const Msg& m) = 0;  // dropped unless joined
};
std::unique_ptr<Uplink> start_uplink(const Options* opt, Agent* agent, std::string hostname);

}  // namespace dl
