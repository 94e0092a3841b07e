#include "coordinator.hpp"

#include <algorithm>
#include <cstdio>

#include "output.hpp"

namespace dl {

Coordinator::Coordinator(const Options* opt, std::string hostname, std::string summary_dir, Send send)
    : opt_(opt), summary_dir_(std::move(summary_dir)), send_(std::move(send)) {
  nodes_.resize(static_cast<size_t>(opt->nnodes));
  nodes_[0].joined = true;
  nodes_[0].nproc = opt->nproc_per_node;
  nodes_[0].host = std::move(hostname);
  rdzv_deadline_ = mono_now() + opt->rdzv_timeout;
  next_wait_note_ = mono_now() + 5;
  maybe_start();
}

std::string Coordinator::check_hello(const Msg& h, bool* fatal) const {
  *fatal = false;
  if (h.type != "HELLO" || h.get("proto") != kProtocolName) return "not a detlite-launch peer";
  if (h.get_int("version", -1) != kProtocolVersion)
    return "protocol version " + h.get("version") + " differs from node 0's " + std::to_string(kProtocolVersion) +
           " (use the same detlite-launch on every node)";
  if (h.get("run") != opt_->run_id)
    return "run id '" + h.get("run") + "' differs from node 0's '" + opt_->run_id + "'";
  const long long node = h.get_int("node", -1);
  const std::string who = "node " + h.get("node") + " (" + h.get("host") + ")";
  *fatal = true;
  if (h.get_int("nnodes", -1) != opt_->nnodes)
    return who + " has --nnodes " + h.get("nnodes") + " but node 0 has " + std::to_string(opt_->nnodes);
  if (node < 1 || node >= opt_->nnodes)
    return who + ": node rank out of range 1.." + std::to_string(opt_->nnodes - 1);
  if (h.get_int("max_restarts", -1) != opt_->max_restarts)
    return who + " has --max-restarts " + h.get("max_restarts") + " but node 0 has " +
           std::to_string(opt_->max_restarts);
  if (h.get_int("nproc", 0) < 1) return who + " has no workers";
  *fatal = false;  // from here on the newcomer is refused but the job goes on
  if (started_) return who + " tried to join after the job started";
  if (nodes_[static_cast<size_t>(node)].joined)
    return "node rank " + std::to_string(node) + " already joined from " + nodes_[static_cast<size_t>(node)].host;
  return "";
}

void Coordinator::node_joined(int node, const Msg& hello) {
  Node& n = nodes_[static_cast<size_t>(node)];
  n.joined = true;
  n.nproc = static_cast<int>(hello.get_int("nproc", 1));
  n.host = hello.get("host");
  maybe_start();
}

bool Coordinator::joined(int node) const {
  return node >= 0 && node < static_cast<int>(nodes_.size()) && nodes_[static_cast<size_t>(node)].joined &&
         !nodes_[static_cast<size_t>(node)].lost;
}

std::vector<int> Coordinator::joined_nodes() const {
  std::vector<int> out;
  for (int i = 0; i < static_cast<int>(nodes_.size()); ++i)
    if (joined(i)) out.push_back(i);
  return out;
}

void Coordinator::maybe_start() {
  if (started_ || result_sent_) return;
  for (const Node& n : nodes_)
    if (!n.joined) return;
  started_ = true;
  start_round("");
}

void Coordinator::start_round(const std::string& reason) {
  ++round_;
  aborting_ = false;
  fates_.clear();
  events_.clear();
  int port = opt_->master_port;
  if (round_ > 0 || port == 0) {
    port = pick_free_port("");
    if (port == 0) {
      RootCause root;
      root.kind = "rendezvous";
      root.code = kExitRendezvous;
      root.what = "node 0 found no free TCP port for MASTER_PORT";
      send_result(kExitRendezvous, &root, format_report(root, {}, kExitRendezvous));
      return;
    }
  } else if (!port_is_free("", port)) {
    log_line("warning: MASTER_PORT " + std::to_string(port) +
             " is already in use on this host; rank 0 will fail to host the store (use --master-port 0 for a "
             "free port)");
  }
  int offset = 0;
  for (Node& n : nodes_) {
    n.offset = offset;
    n.done = false;
    offset += n.nproc;
  }
  world_size_ = offset;
  for (int i = 0; i < static_cast<int>(nodes_.size()); ++i) {
    const Node& n = nodes_[static_cast<size_t>(i)];
    Msg m("START");
    m.set("round", round_).set("port", port).set("addr", opt_->master_addr).set("world", world_size_);
    m.set("offset", n.offset).set("nnodes", opt_->nnodes).set("reason", reason);
    send_(i, m);
  }
}

void Coordinator::abort_round(const std::string& reason) {
  if (aborting_ || round_ < 0) return;
  aborting_ = true;
  for (int i = 0; i < static_cast<int>(nodes_.size()); ++i)
    if (joined(i)) send_(i, Msg("ABORT").set("round", round_).set("reason", reason));
}

void Coordinator::handle(int node, const Msg& m) {
  if (result_sent_) return;
  if (m.type == "FAIL") {
    if (m.get_int("round", -1) == round_) abort_round(m.get("what", "a worker failed"));
  } else if (m.type == "SIGNAL") {
    const int sig = static_cast<int>(m.get_int("sig", 15));
    RootCause ev;
    ev.kind = "signal";
    ev.t = m.get_num("t", wall_now());
    ev.code = 128 + sig;
    ev.node = node;
    ev.what = "the launcher on node " + std::to_string(node) + " (" + nodes_[static_cast<size_t>(node)].host +
              ") received " + signal_name(sig);
    no_restart_ = true;
    if (!started_) {
      send_result(ev.code, &ev, format_report(ev, {}, ev.code));
      return;
    }
    events_.push_back(ev);
    abort_round(ev.what);
  } else if (m.type == "FATE") {
    Fate f = Fate::from_msg(m);
    if (f.round == round_) fates_.push_back(f);
  } else if (m.type == "DONE") {
    if (m.get_int("round", -1) != round_) return;
    nodes_[static_cast<size_t>(node)].done = true;
    finish_round();
  }
}

void Coordinator::node_lost(int node, const std::string& why) {
  if (result_sent_ || node <= 0 || node >= static_cast<int>(nodes_.size())) return;
  Node& n = nodes_[static_cast<size_t>(node)];
  if (!started_) {
    // Before the start a node may come back (e.g. its launcher was restarted by the scheduler).
    log_line("node " + std::to_string(node) + " (" + n.host + ") left before the start: " + why);
    n.joined = false;
    return;
  }
  if (n.lost) return;
  n.lost = true;
  no_restart_ = true;
  RootCause ev;
  ev.kind = "lost";
  ev.t = wall_now();
  ev.code = kExitPeerLost;
  ev.node = node;
  ev.what = "node " + std::to_string(node) + " (" + n.host + ") was lost: " + why;
  events_.push_back(ev);
  log_line(ev.what);
  abort_round(ev.what);
  finish_round();
}

void Coordinator::fail_rendezvous(const std::string& why) {
  RootCause root;
  root.kind = "rendezvous";
  root.code = kExitRendezvous;
  root.what = why;
  send_result(kExitRendezvous, &root, format_report(root, {}, kExitRendezvous));
}

void Coordinator::finish_round() {
  if (result_sent_ || round_ < 0) return;
  for (const Node& n : nodes_)
    if (!n.lost && !n.done) return;

  // Lost nodes' ranks have no reported fate.
  for (int i = 0; i < static_cast<int>(nodes_.size()); ++i) {
    const Node& n = nodes_[static_cast<size_t>(i)];
    if (!n.lost) continue;
    for (int lr = 0; lr < n.nproc; ++lr) {
      Fate f;
      f.rank = n.offset + lr;
      f.local_rank = lr;
      f.node = i;
      f.host = n.host;
      f.round = round_;
      f.state = "lost";
      fates_.push_back(f);
    }
  }
  // The root cause is the earliest event: a worker that failed on its own, a signal to a launcher,
  // or a lost node. Workers stopped by the launcher ("terminated") are consequences, not causes.
  std::vector<RootCause> causes = events_;
  for (const Fate& f : fates_) {
    if (f.state != "failed") continue;
    RootCause c;
    c.kind = "worker";
    c.t = f.t_exit;
    c.code = f.code() > 0 ? f.code() : 1;
    c.node = f.node;
    c.what = "rank " + std::to_string(f.rank) + " on node " + std::to_string(f.node) + " (" + f.host + ", pid " +
             std::to_string(f.pid) + ") " + f.how();
    c.fate = f;
    causes.push_back(c);
  }
  if (causes.empty()) {
    bool all_ok = true;
    for (const Fate& f : fates_) all_ok = all_ok && f.state == "succeeded";
    if (all_ok) {
      send_result(0, nullptr, "");
      return;
    }
    RootCause c;
    c.kind = "unknown";
    c.code = 1;
    c.what = "workers stopped without a recorded cause";
    causes.push_back(c);
  }
  const RootCause root = *std::min_element(causes.begin(), causes.end(), [](const RootCause& a, const RootCause& b) {
    return a.t < b.t;
  });
  if (!no_restart_ && root.kind == "worker" && round_ < opt_->max_restarts) {
    restarts_.push_back("round " + std::to_string(round_) + ": " + root.what);
    log_line("round " + std::to_string(round_) + " failed (" + root.what + "); restarting all nodes (" +
             std::to_string(round_ + 1) + "/" + std::to_string(opt_->max_restarts) + ")");
    start_round(root.what);
    return;
  }
  send_result(root.code, &root, format_report(root, fates_, root.code));
}

void Coordinator::send_result(int code, const RootCause* root, const std::string& report) {
  if (result_sent_) return;
  result_sent_ = true;
  Msg m("RESULT");
  m.set("code", code).set("report", report);
  if (root) m.set("root_node", root->node).set("root_what", root->what).set("root_kind", root->kind);
  for (int i = 0; i < static_cast<int>(nodes_.size()); ++i)
    if (joined(i)) send_(i, m);
  if (summary_dir_.empty()) return;
  Summary s;
  s.run_id = opt_->run_id;
  s.exit_code = code;
  s.nnodes = opt_->nnodes;
  s.node_rank = 0;
  s.world_size = world_size_;
  s.rounds = round_ + 1;
  s.max_restarts = opt_->max_restarts;
  if (root) {
    s.has_root = true;
    s.root = *root;
  }
  s.restarts = restarts_;
  s.fates = fates_;
  if (!write_file_atomic(summary_dir_ + "/summary.json", summary_json(s)))
    log_line("warning: cannot write " + summary_dir_ + "/summary.json");
}

void Coordinator::tick(double now) {
  if (started_ || result_sent_) return;
  std::string missing;
  for (int i = 0; i < static_cast<int>(nodes_.size()); ++i)
    if (!nodes_[static_cast<size_t>(i)].joined) missing += (missing.empty() ? "" : ",") + std::to_string(i);
  if (now >= rdzv_deadline_) {
    char t[32];
    std::snprintf(t, sizeof t, "%g", opt_->rdzv_timeout);
    fail_rendezvous("rendezvous timed out after " + std::string(t) + " s: node(s) " + missing +
                    " did not join node 0 at " + opt_->rdzv_host + ":" + std::to_string(opt_->rdzv_port));
  } else if (now >= next_wait_note_) {
    log_line("waiting for node(s) " + missing + " to join at " + opt_->rdzv_host + ":" +
             std::to_string(opt_->rdzv_port));
    next_wait_note_ = now + 30;
  }
}

double Coordinator::next_deadline() const {
  if (started_ || result_sent_) return 1e18;
  return std::min(rdzv_deadline_, next_wait_note_);
}

}  // namespace dl
