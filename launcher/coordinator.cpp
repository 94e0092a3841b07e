#include "coordinator.hpp"

#include <algorithm>

namespace dl {
Coordinator::Coordinator(const Options* opt, std::string hostname, Send send)
    : opt_(opt), send_(std::move(send)), nodes_(static_cast<size_t>(opt->nnodes)),
      rdzv_deadline_(mono_now() + opt->rdzv_timeout), next_wait_note_(mono_now() + 5) {
  node_joined(0, Msg("HELLO").set("nproc", opt->nproc_per_node).set("host", hostname));  // node 0 needs no admission
}

std::string Coordinator::check_hello(const Msg& h, bool* fatal) const {
  *fatal = false;
  if (h.type != "HELLO" || h.get("proto") != kProtocolName) return "not a detlite-launch peer";
  if (h.get_int("version", -1) != kProtocolVersion)
    return "protocol version " + h.get("version") + " differs from node 0's " + std::to_string(kProtocolVersion) +
           " (use the same detlite-launch on every node)";
  if (h.get("run") != opt_->run_id) return "run id '" + h.get("run") + "' differs from node 0's '" + opt_->run_id + "'";
  const long long node = h.get_int("node", -1);
  const std::string who = "node " + h.get("node") + " (" + h.get("host") + ")";
  *fatal = true;
  if (h.get_int("nnodes", -1) != opt_->nnodes)
    return who + " has --nnodes " + h.get("nnodes") + " but node 0 has " + std::to_string(opt_->nnodes);
  if (node < 1 || node >= opt_->nnodes) return who + ": node rank out of range 1.." + std::to_string(opt_->nnodes - 1);
  if (h.get_int("max_restarts", -1) != opt_->max_restarts)
    return who + " has --max-restarts " + h.get("max_restarts") + " but node 0 has " +
           std::to_string(opt_->max_restarts);
  if (h.get_int("nproc", 0) < 1) return who + " has no workers";
  *fatal = false;  // from here on the newcomer is refused but the job goes on
  if (state_ != JobState::Rendezvous) return who + " tried to join after the job started";
  const Node& n = nodes_[static_cast<size_t>(node)];
  if (n.joined) return "node rank " + std::to_string(node) + " already joined from " + n.host;
  return "";
}

void Coordinator::node_joined(int node, const Msg& hello) {
  Node& n = nodes_[static_cast<size_t>(node)];
  n.joined = true;
  n.nproc = static_cast<int>(hello.get_int("nproc", 1));
  n.host = hello.get("host");
  if (state_ == JobState::Rendezvous && std::all_of(nodes_.begin(), nodes_.end(), [](auto& k) { return k.joined; }))
    start_round("");
}

void Coordinator::broadcast(const Msg& m) {
  for (size_t i = 0; i < nodes_.size(); ++i)
    if (nodes_[i].joined && !nodes_[i].lost) send_(static_cast<int>(i), m);
}

void Coordinator::start_round(const std::string& reason) {
  ++log_.round;
  state_ = JobState::Running;
  log_.fates.clear();
  events_.clear();
  int port = opt_->master_port;
  if (log_.round > 0 || port == 0) {
    port = probe_port(0);  // a restart's old port may still be held by a dying store
    if (port == 0) return fail_rendezvous("node 0 found no free TCP port for MASTER_PORT");
  } else if (!probe_port(port)) {
    log_line("warning: MASTER_PORT " + std::to_string(port) + " is already in use on this host; rank 0 will fail "
             "to host the store (use --master-port 0 for a free port)");
  }
  log_.world_size = 0;
  for (Node& n : nodes_) {
    n.offset = log_.world_size;
    n.done = false;
    log_.world_size += n.nproc;
  }
  Msg start("START");
  start.set("round", log_.round).set("port", port).set("addr", opt_->master_addr).set("world", log_.world_size);
  start.set("nnodes", opt_->nnodes).set("reason", reason);
  for (size_t i = 0; i < nodes_.size(); ++i)
    send_(static_cast<int>(i), Msg(start).set("offset", nodes_[i].offset));
}

void Coordinator::abort_round(const std::string& reason) {
  if (state_ != JobState::Running) return;
  state_ = JobState::Aborting;
  broadcast(Msg("ABORT").set("round", log_.round).set("reason", reason));
}

void Coordinator::handle(int node, const Msg& m) {
  if (state_ == JobState::Done) return;
  const bool this_round = m.get_int("round", -1) == log_.round;
  if (m.type == "FAIL" && this_round) {
    abort_round(m.get("what", "a worker failed"));
  } else if (m.type == "SIGNAL") {
    const int sig = static_cast<int>(m.get_int("sig", 15));
    const RootCause ev{CauseKind::Signal, 128 + sig, "the launcher on node " + std::to_string(node) + " (" +
                       nodes_[static_cast<size_t>(node)].host + ") received " + signal_name(sig), node,
                       m.get_num("t", wall_now())};
    if (state_ == JobState::Rendezvous) return send_result(&ev, {});
    events_.push_back(ev);
    abort_round(ev.what);
  } else if (m.type == "FATE") {
    Fate f = Fate::from_msg(m);
    if (f.round == log_.round) log_.fates.push_back(f);
  } else if (m.type == "DONE" && this_round) {
    nodes_[static_cast<size_t>(node)].done = true;
    finish_round();
  }
}

void Coordinator::node_lost(int node, const std::string& why) {
  if (state_ == JobState::Done || node <= 0 || node >= static_cast<int>(nodes_.size())) return;
  Node& n = nodes_[static_cast<size_t>(node)];
  if (state_ == JobState::Rendezvous) {
    n.joined = false;  // before the start a node may come back (e.g. its launcher restarted by the scheduler)
    return log_line("node " + std::to_string(node) + " (" + n.host + ") left before the start: " + why);
  }
  if (n.lost) return;
  n.lost = true;
  const std::string what = "node " + std::to_string(node) + " (" + n.host + ") was lost: " + why;
  events_.push_back({CauseKind::Lost, kExitPeerLost, what, node, wall_now()});
  log_line(what);
  abort_round(what);
  finish_round();
}

void Coordinator::fail_rendezvous(const std::string& why) {
  const RootCause root{CauseKind::Rendezvous, kExitRendezvous, why};
  send_result(&root, {});
}

void Coordinator::finish_round() {
  if (state_ != JobState::Running && state_ != JobState::Aborting) return;
  for (const Node& n : nodes_)
    if (!n.lost && !n.done) return;
  for (size_t i = 0; i < nodes_.size(); ++i) {  // lost nodes' ranks reported no fate
    const Node& n = nodes_[i];
    for (int lr = 0; n.lost && lr < n.nproc; ++lr)
      log_.fates.push_back({n.offset + lr, lr, static_cast<int>(i), log_.round, n.host, RankState::Lost});
  }
  // The candidates for the root cause: signals to launchers, lost nodes, and workers that failed on
  // their own. Workers stopped by the launcher ("terminated") are consequences, not causes.
  std::vector<RootCause> all = events_;
  for (const Fate& f : log_.fates)
    if (f.state == RankState::Failed)
      all.push_back({CauseKind::Worker, f.code() > 0 ? f.code() : 1, "rank " + std::to_string(f.rank) + " on node " +
                     std::to_string(f.node) + " (" + f.host + ", pid " + std::to_string(f.pid) + ") " + f.how(),
                     f.node, f.t_exit, f});
  const bool all_ok = std::all_of(log_.fates.begin(), log_.fates.end(),
                                  [](const Fate& f) { return f.state == RankState::Succeeded; });
  if (all.empty() && all_ok) return send_result(nullptr, {});
  if (all.empty()) all.push_back({CauseKind::Unknown, 1, "workers stopped without a recorded cause"});
  const RootCause root =  // the earliest event
      *std::min_element(all.begin(), all.end(), [](const RootCause& a, const RootCause& b) { return a.t < b.t; });
  if (events_.empty() && root.kind == CauseKind::Worker && log_.round < opt_->max_restarts) {
    log_.restarts.push_back("round " + std::to_string(log_.round) + ": " + root.what);
    log_line("round " + std::to_string(log_.round) + " failed (" + root.what + "); restarting all nodes (" +
             std::to_string(log_.round + 1) + "/" + std::to_string(opt_->max_restarts) + ")");
    return start_round(root.what);
  }
  send_result(&root, log_.fates);
}

void Coordinator::send_result(const RootCause* root, const std::vector<Fate>& fates) {
  if (state_ == JobState::Done) return;
  state_ = JobState::Done;
  Msg m("RESULT");
  m.set("code", root ? root->code : 0).set("report", root ? format_report(*root, fates) : "");
  if (root) m.set("root_node", root->node).set("root_what", root->what);
  broadcast(m);
  if (!opt_->log_dir.empty()) write_summary(opt_->log_dir, *opt_, root, log_);
}

void Coordinator::tick(double now) {
  if (state_ != JobState::Rendezvous) return;
  std::string missing;
  for (size_t i = 0; i < nodes_.size(); ++i)
    if (!nodes_[i].joined) missing += (missing.empty() ? "" : ",") + std::to_string(i);
  const std::string where = opt_->rdzv_host + ":" + std::to_string(opt_->rdzv_port);
  if (now >= rdzv_deadline_)
    return fail_rendezvous("rendezvous timed out after " + fmt_num(opt_->rdzv_timeout) + " s: node(s) " + missing +
                           " did not join node 0 at " + where);
  if (now < next_wait_note_) return;
  log_line("waiting for node(s) " + missing + " to join at " + where);
  next_wait_note_ = now + 30;
}

double Coordinator::next_deadline(double) const {
  return state_ != JobState::Rendezvous ? kNever : std::min(rdzv_deadline_, next_wait_note_);
}
}  // namespace dl
