// The two ends of the control plane. Node 0 runs a Hub: it accepts the other launchers, checks their
// HELLO with the coordinator, relays messages both ways and declares nodes lost (closed connection
// or missed heartbeats). Every other node runs an Uplink: it connects to node 0 with retries until
// the rendezvous timeout, introduces itself, relays messages to and from the local agent and reports
// node 0's loss. Both are driven by the launcher's poll loop through add_pollfds / on_poll / tick.
#pragma once

#include <poll.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "args.hpp"
#include "control.hpp"
#include "coordinator.hpp"
#include "supervisor.hpp"

namespace dl {

class Hub {
 public:
  explicit Hub(const Options* opt) : opt_(opt) {}
  ~Hub();
  void set_coordinator(Coordinator* c) { coord_ = c; }
  bool listen(std::string* error);  // on --local-addr, else on a numeric rdzv host, else everywhere
  void send(int node, const Msg& m);

  void add_pollfds(std::vector<pollfd>* fds);
  void on_poll(const pollfd* fds, size_t n);  // the entries added by the last add_pollfds
  void tick(double now);
  double next_deadline(double now) const;
  // After the result went out: flush, half-close, and wait (bounded) for the peers to close, so that
  // closing with unread data cannot reset a connection before a peer has read the result.
  void linger(double seconds);

 private:
  struct Pending {
    std::unique_ptr<Conn> conn;
    double deadline = 0;
    bool refused = false;
  };
  void on_hello(Pending& p, const Msg& hello);
  void drop(int node, const std::string& why);

  const Options* opt_;
  Coordinator* coord_ = nullptr;
  int listen_fd_ = -1;
  std::vector<Pending> pending_;
  std::map<int, std::unique_ptr<Conn>> peers_;
  std::vector<std::pair<int, int>> slots_;  // per polled fd: (kind, index or node)
};

class Uplink {
 public:
  Uplink(const Options* opt, Agent* agent, std::string hostname);
  ~Uplink();
  void send(const Msg& m);  // dropped unless joined
  bool joined() const { return state_ == Joined; }

  void add_pollfds(std::vector<pollfd>* fds);
  void on_poll(const pollfd* fds, size_t n);
  void tick(double now);
  double next_deadline(double now) const;

 private:
  enum State { Waiting, Connecting, Handshake, Joined, Gone };
  void lost(const std::string& why);

  const Options* opt_;
  Agent* agent_;
  std::string hostname_;
  State state_ = Waiting;
  int connecting_fd_ = -1;
  std::unique_ptr<Conn> conn_;
  double next_attempt_ = 0;
  double deadline_;
  double next_note_;
  std::string last_error_;
};

}  // namespace dl
