#include "plane.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <set>

#include "output.hpp"

namespace dl {

namespace {
enum Slot { kListen, kPending, kPeer };
constexpr double kRetry = 0.5;

std::string seconds(double s) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", s);
  return b;
}
}  // namespace

// ---------------------------------------------------------------------------------------------- Hub

Hub::~Hub() {
  if (listen_fd_ >= 0) close(listen_fd_);
}

bool Hub::listen(std::string* error) {
  const std::string host = !opt_->local_addr.empty() ? opt_->local_addr
                           : is_numeric_ip(opt_->rdzv_host) ? opt_->rdzv_host : "";
  std::string err;
  listen_fd_ = listen_on(host, opt_->rdzv_port, &err);
  if (listen_fd_ < 0) {
    *error = "cannot listen for the other nodes on " + (host.empty() ? std::string("*") : host) + ":" +
             std::to_string(opt_->rdzv_port) + ": " + err + " (choose another port with --rdzv-endpoint)";
    return false;
  }
  return true;
}

void Hub::send(int node, const Msg& m) {
  auto it = peers_.find(node);
  if (it != peers_.end()) it->second->send(m);
}

void Hub::drop(int node, const std::string& why) {
  auto it = peers_.find(node);
  if (it == peers_.end()) return;
  peers_.erase(it);
  if (coord_) coord_->node_lost(node, why);
}

void Hub::add_pollfds(std::vector<pollfd>* fds) {
  slots_.clear();
  if (listen_fd_ >= 0 && coord_ && !coord_->result_sent()) {
    fds->push_back(pollfd{listen_fd_, POLLIN, 0});
    slots_.emplace_back(kListen, 0);
  }
  for (size_t i = 0; i < pending_.size(); ++i) {
    const Conn& c = *pending_[i].conn;
    fds->push_back(pollfd{c.fd(), static_cast<short>(POLLIN | (c.wants_write() ? POLLOUT : 0)), 0});
    slots_.emplace_back(kPending, static_cast<int>(i));
  }
  for (auto& p : peers_) {
    fds->push_back(pollfd{p.second->fd(), static_cast<short>(POLLIN | (p.second->wants_write() ? POLLOUT : 0)), 0});
    slots_.emplace_back(kPeer, p.first);
  }
}

void Hub::on_hello(Pending& p, const Msg& hello) {
  bool fatal = false;
  std::string why = coord_ ? coord_->check_hello(hello, &fatal) : "node 0 is shutting down";
  if (why.empty()) {
    const int node = static_cast<int>(hello.get_int("node"));
    p.conn->send(Msg("WELCOME").set("version", kProtocolVersion));
    peers_[node] = std::move(p.conn);
    coord_->node_joined(node, hello);
    return;
  }
  log_line("refused a node: " + why);
  p.conn->send(Msg("REJECT").set("reason", why));
  p.refused = true;
  p.deadline = mono_now() + 1;
  if (fatal && coord_) coord_->fail_rendezvous("inconsistent nodes: " + why);
}

void Hub::on_poll(const pollfd* fds, size_t n) {
  std::vector<std::pair<int, std::string>> lost;
  for (size_t i = 0; i < n && i < slots_.size(); ++i) {
    const pollfd& p = fds[i];
    if (!p.revents) continue;
    const int kind = slots_[i].first, idx = slots_[i].second;
    if (kind == kListen) {
      for (;;) {
        int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) break;
        Pending pd;
        pd.conn = std::make_unique<Conn>(fd);
        pd.deadline = mono_now() + 10;  // a HELLO is due right away; drop silent connections
        pending_.push_back(std::move(pd));
      }
    } else if (kind == kPending) {
      Pending& pd = pending_[static_cast<size_t>(idx)];
      if (!pd.conn) continue;
      if (p.revents & POLLOUT) pd.conn->on_writable();
      if (pd.refused) {
        if (!pd.conn->wants_write()) pd.conn.reset();  // the REJECT is out
        continue;
      }
      std::vector<Msg> msgs;
      pd.conn->on_readable(&msgs);
      if (!msgs.empty()) on_hello(pd, msgs.front());
      else if (pd.conn->closed()) pd.conn.reset();
    } else {
      auto it = peers_.find(idx);
      if (it == peers_.end()) continue;
      Conn& c = *it->second;
      if (p.revents & POLLOUT) c.on_writable();
      std::vector<Msg> msgs;
      if (p.revents & (POLLIN | POLLHUP | POLLERR)) c.on_readable(&msgs);
      for (const Msg& m : msgs)
        if (m.type != "HB" && coord_) coord_->handle(idx, m);
      if (c.closed()) lost.emplace_back(idx, c.close_reason());
    }
  }
  for (auto& l : lost) drop(l.first, l.second);
  pending_.erase(std::remove_if(pending_.begin(), pending_.end(), [](const Pending& p) { return !p.conn; }),
                 pending_.end());
}

void Hub::tick(double now) {
  const double hb = opt_->heartbeat_interval, timeout = opt_->heartbeat_timeout;
  std::vector<int> silent;
  for (auto& p : peers_) {
    if (now - p.second->last_sent >= hb) p.second->send(Msg("HB"));
    if (now - p.second->last_heard > timeout) silent.push_back(p.first);
  }
  for (int node : silent) drop(node, "no heartbeat for " + seconds(timeout) + " s");
  for (auto& p : pending_)
    if (now >= p.deadline) p.conn.reset();
  pending_.erase(std::remove_if(pending_.begin(), pending_.end(), [](const Pending& p) { return !p.conn; }),
                 pending_.end());
}

double Hub::next_deadline(double now) const {
  return peers_.empty() ? now + 1 : now + opt_->heartbeat_interval / 2;
}

void Hub::linger(double secs) {
  const double until = mono_now() + secs;
  std::set<int> open, shut;
  for (auto& p : peers_) open.insert(p.first);
  while (!open.empty() && mono_now() < until) {
    std::vector<pollfd> pf;
    std::vector<int> ids;
    for (int id : open) {
      Conn& c = *peers_[id];
      c.on_writable();
      if (!c.wants_write() && !shut.count(id)) {
        shutdown(c.fd(), SHUT_WR);
        shut.insert(id);
      }
      pf.push_back(pollfd{c.fd(), static_cast<short>(POLLIN | (c.wants_write() ? POLLOUT : 0)), 0});
      ids.push_back(id);
    }
    if (poll(pf.data(), pf.size(), 50) <= 0) continue;
    for (size_t i = 0; i < pf.size(); ++i) {
      Conn& c = *peers_[ids[i]];
      std::vector<Msg> ignored;
      if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) c.on_readable(&ignored);
      if (c.closed()) open.erase(ids[i]);
    }
  }
  peers_.clear();
}

// ------------------------------------------------------------------------------------------- Uplink

Uplink::Uplink(const Options* opt, Agent* agent, std::string hostname)
    : opt_(opt), agent_(agent), hostname_(std::move(hostname)) {
  deadline_ = mono_now() + opt->rdzv_timeout;
  next_note_ = mono_now() + 5;
}

Uplink::~Uplink() {
  if (connecting_fd_ >= 0) close(connecting_fd_);
}

void Uplink::send(const Msg& m) {
  if (state_ == Joined && conn_) conn_->send(m);
}

void Uplink::lost(const std::string& why) {
  conn_.reset();
  state_ = Gone;
  agent_->set_connected(false);
  agent_->coordinator_lost(why);
}

void Uplink::tick(double now) {
  if (state_ == Waiting && now >= next_attempt_) {
    std::string err;
    bool fatal = false;
    int fd = start_connect(opt_->rdzv_host, opt_->rdzv_port, opt_->local_addr, &err, &fatal);
    if (fd >= 0) {
      connecting_fd_ = fd;
      state_ = Connecting;
    } else if (fatal) {
      state_ = Gone;
      agent_->finish_now(kExitRendezvous, err);
      return;
    } else {
      last_error_ = err;
      next_attempt_ = now + kRetry;
    }
  }
  const std::string where = opt_->rdzv_host + ":" + std::to_string(opt_->rdzv_port);
  if (state_ == Waiting || state_ == Connecting || state_ == Handshake) {
    if (now >= deadline_) {
      state_ = Gone;
      agent_->finish_now(kExitRendezvous, "could not join node 0 at " + where + " within " +
                                              seconds(opt_->rdzv_timeout) + " s" +
                                              (last_error_.empty() ? "" : " (last error: " + last_error_ + ")"));
      return;
    }
    if (now >= next_note_) {
      log_line("waiting for node 0 at " + where + (last_error_.empty() ? "" : " (" + last_error_ + ")"));
      next_note_ = now + 30;
    }
  }
  if (state_ == Joined && conn_) {
    if (now - conn_->last_sent >= opt_->heartbeat_interval) conn_->send(Msg("HB"));
    if (now - conn_->last_heard > opt_->heartbeat_timeout)
      lost("no heartbeat from node 0 for " + seconds(opt_->heartbeat_timeout) + " s");
  }
}

double Uplink::next_deadline(double now) const {
  switch (state_) {
    case Waiting: return std::min(next_attempt_, deadline_);
    case Connecting:
    case Handshake: return std::min(deadline_, now + 1);
    case Joined: return now + opt_->heartbeat_interval / 2;
    case Gone: break;
  }
  return now + 1;
}

void Uplink::add_pollfds(std::vector<pollfd>* fds) {
  if (state_ == Connecting) fds->push_back(pollfd{connecting_fd_, POLLOUT, 0});
  else if ((state_ == Handshake || state_ == Joined) && conn_)
    fds->push_back(pollfd{conn_->fd(), static_cast<short>(POLLIN | (conn_->wants_write() ? POLLOUT : 0)), 0});
}

void Uplink::on_poll(const pollfd* fds, size_t n) {
  if (n == 0 || !fds[0].revents) return;
  if (state_ == Connecting) {
    int err = connect_result(connecting_fd_);
    if (err != 0) {
      close(connecting_fd_);
      connecting_fd_ = -1;
      last_error_ = errno_text(err);
      state_ = Waiting;
      next_attempt_ = mono_now() + kRetry;
      return;
    }
    conn_ = std::make_unique<Conn>(connecting_fd_);
    connecting_fd_ = -1;
    state_ = Handshake;
    Msg hello("HELLO");
    hello.set("proto", kProtocolName).set("version", kProtocolVersion).set("run", opt_->run_id);
    hello.set("nnodes", opt_->nnodes).set("node", opt_->node_rank).set("nproc", opt_->nproc_per_node);
    hello.set("max_restarts", opt_->max_restarts).set("host", hostname_);
    conn_->send(hello);
    return;
  }
  if (!conn_) return;
  if (fds[0].revents & POLLOUT) conn_->on_writable();
  std::vector<Msg> msgs;
  if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) conn_->on_readable(&msgs);
  for (const Msg& m : msgs) {
    if (state_ == Handshake && m.type == "WELCOME") {
      state_ = Joined;
      agent_->set_connected(true);
    } else if (state_ == Handshake && m.type == "REJECT") {
      state_ = Gone;
      conn_.reset();
      agent_->finish_now(kExitRendezvous, "node 0 refused this node: " + m.get("reason"));
      return;
    } else if (m.type != "HB" && m.type != "WELCOME") {
      agent_->handle(m);  // START, ABORT, RESULT
    }
  }
  if (conn_ && conn_->closed() && !agent_->finished()) {
    const std::string why = conn_->close_reason();
    if (state_ == Handshake) {  // node 0 may be restarting: try again until the deadline
      conn_.reset();
      state_ = Waiting;
      last_error_ = why;
      next_attempt_ = mono_now() + kRetry;
    } else if (state_ == Joined) {
      lost("lost the connection to node 0 (" + why + ")");
    }
  }
}

}  // namespace dl
