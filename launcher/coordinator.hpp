// Node 0's coordinator: admits the other launchers (checking protocol version, run id and world
// description), chooses MASTER_PORT, starts every round on every node, broadcasts an abort on the
// first failure or lost node, decides restarts and the final exit code, and writes the summary.
#pragma once

#include <functional>

#include "report.hpp"

namespace dl {
class Coordinator : public Pollable {
 public:
  using Send = std::function<void(int node, const Msg&)>;
  Coordinator(const Options* opt, std::string hostname, Send send);

  // Validates a HELLO. Returns "" when the node may join; otherwise the reason, with *fatal set
  // when the whole run must stop (same run id but an inconsistent world description).
  std::string check_hello(const Msg& hello, bool* fatal) const;
  void node_joined(int node, const Msg& hello);
  void handle(int node, const Msg& m);  // FAIL, SIGNAL, FATE, DONE
  void node_lost(int node, const std::string& why);
  void fail_rendezvous(const std::string& why);
  void tick(double now) override;  // the rendezvous deadline and its reminders
  double next_deadline(double now) const override;
  bool result_sent() const { return state_ == JobState::Done; }

 private:
  // Node 0's view of the job: waiting for the nodes to join, a round running, a round being aborted
  // (every node stops its workers and reports), the result sent to every node.
  enum class JobState { Rendezvous, Running, Aborting, Done };
  struct Node {
    bool joined = false, lost = false, done = false;
    int nproc = 0, offset = 0;
    std::string host;
  };
  void broadcast(const Msg& m);  // to every node that joined and was not lost
  void start_round(const std::string& reason);
  void abort_round(const std::string& reason);
  void finish_round();
  void send_result(const RootCause* root, const std::vector<Fate>& fates);  // root: null on success

  const Options* opt_;
  Send send_;
  std::vector<Node> nodes_;
  double rdzv_deadline_, next_wait_note_;
  JobState state_ = JobState::Rendezvous;
  std::vector<RootCause> events_;  // signals / lost nodes in this round: after one, restarting would not help
  RunLog log_;
};
}  // namespace dl
