#include "plane.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>

#include "agent.hpp"
#include "coordinator.hpp"

namespace dl {
namespace {
constexpr size_t kMaxLine = 1 << 20;
constexpr double kRetry = 0.5;  // seconds between connection attempts to node 0

// One TCP connection with buffered, non-blocking I/O, and the heartbeats that keep it alive.
class Conn {
 public:
  explicit Conn(int fd) : fd_(fd) {  // fd: non-blocking and close-on-exec, from socket() or accept4()
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    last_heard_ = last_sent_ = mono_now();
  }
  ~Conn() { ::close(fd_); }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  int fd() const { return fd_; }
  bool wants_write() const { return !out_.empty(); }
  bool closed() const { return !reason_.empty(); }
  const std::string& close_reason() const { return reason_; }
  pollfd pollfd_in() const { return pollfd{fd_, static_cast<short>(POLLIN | (wants_write() ? POLLOUT : 0)), 0}; }
  void send(const Msg& m) {
    if (closed()) return;
    out_ += encode_msg(m);
    last_sent_ = mono_now();
    on_writable();
  }
  // Sends a heartbeat when one is due; false once the peer has been silent for longer than the timeout.
  bool heartbeat(double now, const Options& o) {
    if (now - last_sent_ >= o.heartbeat_interval) send(Msg("HB"));
    return now - last_heard_ <= o.heartbeat_timeout;
  }
  void on_writable() {
    while (!out_.empty() && !closed()) {
      const ssize_t n = ::send(fd_, out_.data(), out_.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (n <= 0) return fail(std::string("send: ") + errno_text(errno));
      out_.erase(0, static_cast<size_t>(n));
    }
  }
  // Reads what is available; appends complete messages. Sets closed() on EOF / error / garbage.
  void on_readable(std::vector<Msg>* msgs) {
    char buf[65536];
    ssize_t n;  // also when closed for sending: what the peer said before it went still counts
    while ((n = ::recv(fd_, buf, sizeof buf, 0)) > 0 || (n < 0 && errno == EINTR)) {
      if (n > 0) in_.append(buf, static_cast<size_t>(n));
      if (in_.size() > kMaxLine && in_.find('\n') == std::string::npos) break;
    }
    if (n > 0) fail("oversized message");
    else if (n == 0) fail("connection closed by peer");
    else if (errno != EAGAIN && errno != EWOULDBLOCK) fail(std::string("recv: ") + errno_text(errno));
    size_t start = 0;
    for (size_t nl; (nl = in_.find('\n', start)) != std::string::npos; start = nl + 1) {
      Msg m;
      if (!decode_msg(in_.substr(start, nl - start), &m)) {
        fail("malformed message");
        break;
      }
      last_heard_ = mono_now();
      msgs->push_back(std::move(m));
    }
    in_.erase(0, start);
  }
  void on_events(short revents, std::vector<Msg>* msgs) {  // as the revents of the last poll ask
    if (revents & POLLOUT) on_writable();
    if (revents & (POLLIN | POLLHUP | POLLERR)) on_readable(msgs);
  }

 private:
  void fail(const std::string& why) { if (reason_.empty()) reason_ = why; }  // the first reason stays
  int fd_;
  std::string in_, out_;
  std::string reason_;  // why it closed; empty while open
  double last_heard_ = 0, last_sent_ = 0;  // mono time of the last message received / queued
};

class Hub final : public Plane {
 public:
  Hub(const Options* opt, Coordinator* coord, int listen_fd) : opt_(opt), coord_(coord), listen_fd_(listen_fd) {}
  ~Hub() override { close(listen_fd_); }
  void send(int node, const Msg& m) override {
    for (Peer& p : peers_)
      if (p.conn && p.node == node) return p.conn->send(m);
  }
  // The peers, then the listening socket until the result is out.
  void add_pollfds(std::vector<pollfd>* fds) override {
    peers_.erase(std::remove_if(peers_.begin(), peers_.end(), [](const Peer& p) { return !p.conn; }), peers_.end());
    for (const Peer& p : peers_) fds->push_back(p.conn->pollfd_in());
    polled_ = peers_.size();
    if (!coord_->result_sent()) fds->push_back(pollfd{listen_fd_, POLLIN, 0});
  }
  void on_poll(const pollfd* fds, size_t n) override {
    for (size_t i = 0; i < polled_ && i < n; ++i)  // before accepting: peers_ may grow
      if (fds[i].revents && peers_[i].conn) on_events(peers_[i], fds[i].revents);
    while (n > polled_ && fds[polled_].revents) {
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) return;
      peers_.push_back(Peer{std::make_unique<Conn>(fd), -1, mono_now() + 10});  // a HELLO is due right away
    }
  }
  void tick(double now) override {
    for (Peer& p : peers_) {
      if (p.conn && p.node < 0 && now >= p.deadline) p.conn.reset();
      if (p.conn && p.node >= 0 && !p.conn->heartbeat(now, *opt_))
        drop(p, "no heartbeat for " + fmt_num(opt_->heartbeat_timeout) + " s");
    }
  }
  double next_deadline(double now) const override {
    const bool joined = std::any_of(peers_.begin(), peers_.end(), [](const Peer& p) { return p.conn && p.node >= 0; });
    return joined ? now + opt_->heartbeat_interval / 2 : now + 1;
  }
  void linger(double secs) override {
    const double until = mono_now() + secs;
    std::vector<Conn*> open;
    for (Peer& p : peers_)
      if (p.conn && p.node >= 0) open.push_back(p.conn.get());
    while (!open.empty() && mono_now() < until) {
      std::vector<pollfd> pf;
      for (Conn* c : open) {
        c->on_writable();
        if (!c->wants_write()) shutdown(c->fd(), SHUT_WR);  // again each turn: harmless
        pf.push_back(c->pollfd_in());
      }
      if (poll(pf.data(), pf.size(), 50) <= 0) continue;
      for (size_t i = pf.size(); i-- > 0;) {
        std::vector<Msg> ignored;
        open[i]->on_events(pf[i].revents & ~POLLOUT, &ignored);
        if (open[i]->closed()) open.erase(open.begin() + static_cast<long>(i));
      }
    }
    peers_.clear();
  }

 private:
  struct Peer {
    std::unique_ptr<Conn> conn;
    int node = -1;         // -1 until its HELLO is accepted
    double deadline = 0;   // for a HELLO (silent connections are dropped), or for a REJECT to go out
    bool refused = false;
  };
  void drop(Peer& p, const std::string& why) {  // why must not live in p.conn, which goes first
    p.conn.reset();
    coord_->node_lost(p.node, why);
  }
  void on_hello(Peer& p, const Msg& hello) {
    bool fatal = false;
    const std::string why = coord_->check_hello(hello, &fatal);
    if (why.empty()) {
      p.node = static_cast<int>(hello.get_int("node"));
      p.conn->send(Msg("WELCOME").set("version", kProtocolVersion));
      return coord_->node_joined(p.node, hello);
    }
    log_line("refused a node: " + why);
    p.conn->send(Msg("REJECT").set("reason", why));
    p.refused = true;
    p.deadline = mono_now() + 1;
    if (fatal) coord_->fail_rendezvous("inconsistent nodes: " + why);
  }
  void on_events(Peer& p, short revents) {
    if (p.refused) {  // only the REJECT still has to go out
      if (revents & POLLOUT) p.conn->on_writable();
      if (!p.conn->wants_write()) p.conn.reset();
      return;
    }
    std::vector<Msg> msgs;
    p.conn->on_events(p.node < 0 ? revents | POLLIN : revents, &msgs);
    if (p.node < 0 && !msgs.empty()) return on_hello(p, msgs.front());
    for (const Msg& m : msgs)
      if (m.type != "HB") coord_->handle(p.node, m);
    if (p.conn->closed() && p.node < 0) p.conn.reset();
    else if (p.conn->closed()) drop(p, std::string(p.conn->close_reason()));
  }
  const Options* opt_;
  Coordinator* coord_;
  int listen_fd_;
  size_t polled_ = 0;  // peers_ polled by the last add_pollfds, before the listening socket
  std::vector<Peer> peers_;
};

class Uplink final : public Plane {
 public:
  Uplink(const Options* opt, Agent* agent, std::string hostname)
      : opt_(opt), agent_(agent), hostname_(std::move(hostname)), deadline_(mono_now() + opt->rdzv_timeout),
        next_note_(mono_now() + 5) {}
  void send(int /*node*/, const Msg& m) override { if (state_ == Joined) conn_->send(m); }
  void add_pollfds(std::vector<pollfd>* fds) override {
    if (conn_)  // connecting, shaking hands or joined
      fds->push_back(state_ == Connecting ? pollfd{conn_->fd(), POLLOUT, 0} : conn_->pollfd_in());
  }
  void on_poll(const pollfd* fds, size_t n) override {
    if (n == 0 || !fds[0].revents || !conn_) return;
    if (state_ == Connecting) {  // connected, or failed to
      int err = 0;
      socklen_t len = sizeof err;
      if (getsockopt(conn_->fd(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err != 0) return retry(errno_text(err));
      state_ = Handshake;
      Msg hello("HELLO");
      hello.set("proto", kProtocolName).set("version", kProtocolVersion).set("run", opt_->run_id);
      hello.set("nnodes", opt_->nnodes).set("node", opt_->node_rank).set("nproc", opt_->nproc_per_node);
      return conn_->send(hello.set("max_restarts", opt_->max_restarts).set("host", hostname_));
    }
    std::vector<Msg> msgs;
    conn_->on_events(fds[0].revents, &msgs);
    for (const Msg& m : msgs) {
      if (state_ == Handshake && m.type == "REJECT") return gone("node 0 refused this node: " + m.get("reason"));
      if (state_ == Handshake && m.type == "WELCOME") {
        state_ = Joined;
        agent_->coordinator_joined();
      } else if (m.type != "HB" && m.type != "WELCOME") {
        agent_->handle(m);  // START, ABORT, RESULT
      }
    }
    if (conn_ && conn_->closed() && !agent_->finished()) {
      const std::string why = conn_->close_reason();
      if (state_ == Handshake) retry(why);  // node 0 may be restarting: retry until the deadline
      else if (state_ == Joined) gone("lost the connection to node 0 (" + why + ")");
    }
  }
  void tick(double now) override {
    if (state_ == Waiting && now >= next_attempt_) try_connect();
    if (state_ == Joined && conn_ && !conn_->heartbeat(now, *opt_))
      return gone("no heartbeat from node 0 for " + fmt_num(opt_->heartbeat_timeout) + " s");
    if (state_ == Joined || state_ == Gone) return;
    const std::string where = opt_->rdzv_host + ":" + std::to_string(opt_->rdzv_port);
    if (now >= deadline_)
      return gone("could not join node 0 at " + where + " within " + fmt_num(opt_->rdzv_timeout) + " s" +
                  (last_error_.empty() ? "" : " (last error: " + last_error_ + ")"));
    if (now < next_note_) return;
    log_line("waiting for node 0 at " + where + (last_error_.empty() ? "" : " (" + last_error_ + ")"));
    next_note_ = now + 30;
  }
  double next_deadline(double now) const override {
    if (state_ == Waiting) return std::min(next_attempt_, deadline_);
    if (state_ == Joined) return now + opt_->heartbeat_interval / 2;
    return state_ == Gone ? now + 1 : std::min(deadline_, now + 1);
  }

 private:
  enum State { Waiting, Connecting, Handshake, Joined, Gone };
  // A non-blocking connect to node 0, from --local-addr when given. Not being able to bind to it is
  // final: retrying cannot make it an address of this host.
  void try_connect() {
    sockaddr_storage addr{}, local{};
    socklen_t len = 0, local_len = 0;
    std::string err;
    const int fd = open_socket(opt_->rdzv_host, opt_->rdzv_port, &addr, &len, &err);
    if (fd < 0) return retry(err);
    conn_ = std::make_unique<Conn>(fd);
    if (!opt_->local_addr.empty() && (!resolve(opt_->local_addr, 0, &local, &local_len, &err) ||
                                      bind(fd, reinterpret_cast<sockaddr*>(&local), local_len) != 0))
      return gone(!err.empty() ? err : "cannot bind to --local-addr " + opt_->local_addr + ": " + errno_text(errno));
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 && errno != EINPROGRESS)
      return retry(errno_text(errno));
    state_ = Connecting;
  }
  void retry(const std::string& error) {
    conn_.reset();
    last_error_ = error;
    state_ = Waiting;
    next_attempt_ = mono_now() + kRetry;
  }
  // Before the join the rendezvous failed; after it node 0 was lost. Gone first: the agent's reaction
  // may send, which must then be dropped.
  void gone(const std::string& why) {
    const bool joined = state_ == Joined;
    state_ = Gone;
    conn_.reset();
    if (joined) agent_->coordinator_lost(why);
    else agent_->finish_now(kExitRendezvous, why);
  }
  const Options* opt_;
  Agent* agent_;
  const std::string hostname_;
  State state_ = Waiting;
  std::unique_ptr<Conn> conn_;  // from the first connect attempt on
  const double deadline_;
  double next_attempt_ = 0, next_note_;
  std::string last_error_;
};
}  // namespace

std::unique_ptr<Plane> start_hub(const Options* opt, Coordinator* coord, std::string* error) {
  in6_addr a;  // large enough for either family
  const bool numeric = inet_pton(AF_INET, opt->rdzv_host.c_str(), &a) == 1 ||
                       inet_pton(AF_INET6, opt->rdzv_host.c_str(), &a) == 1;
  const std::string host = !opt->local_addr.empty() ? opt->local_addr : numeric ? opt->rdzv_host : "";
  const int fd = listen_on(host, opt->rdzv_port, error);
  if (fd >= 0) return std::make_unique<Hub>(opt, coord, fd);
  *error = "cannot listen for the other nodes on " + (host.empty() ? std::string("*") : host) + ":" +
           std::to_string(opt->rdzv_port) + ": " + *error + " (choose another port with --rdzv-endpoint)";
  return nullptr;
}

std::unique_ptr<Plane> start_uplink(const Options* opt, Agent* agent, std::string hostname) {
  return std::make_unique<Uplink>(opt, agent, std::move(hostname));
}
}  // namespace dl
