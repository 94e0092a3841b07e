// Node 0's coordinator: admits the other launchers (checking protocol version, run id and world
// description), chooses MASTER_PORT, starts every round on every node, broadcasts an abort on the
// first failure or lost node, decides restarts and the final exit code, and writes the summary.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "args.hpp"
#include "control.hpp"
#include "report.hpp"

namespace dl {

class Coordinator {
 public:
  using Send = std::function<void(int node, const Msg&)>;
  Coordinator(const Options* opt, std::string hostname, std::string summary_dir, Send send);

  // Validates a HELLO. Returns "" when the node may join; otherwise the reason, with *fatal set
  // when the whole run must stop (same run id but an inconsistent world description).
  std::string check_hello(const Msg& hello, bool* fatal) const;
  void node_joined(int node, const Msg& hello);
  void handle(int node, const Msg& m);  // FAIL, SIGNAL, FATE, DONE
  void node_lost(int node, const std::string& why);
  void fail_rendezvous(const std::string& why);
  void tick(double now);
  double next_deadline() const;

  bool result_sent() const { return result_sent_; }
  bool joined(int node) const;
  std::vector<int> joined_nodes() const;

 private:
  struct Node {
    bool joined = false, lost = false, done = false;
    int nproc = 0, offset = 0;
    std::string host;
  };
  void maybe_start();
  void start_round(const std::string& reason);
  void abort_round(const std::string& reason);
  void finish_round();
  void send_result(int code, const RootCause* root, const std::string& report);

  const Options* opt_;
  std::string summary_dir_;
  Send send_;
  std::vector<Node> nodes_;
  double rdzv_deadline_;
  double next_wait_note_;
  bool started_ = false;
  int round_ = -1;
  int world_size_ = 0;
  bool aborting_ = false;
  bool no_restart_ = false;
  bool result_sent_ = false;
  std::vector<Fate> fates_;
  std::vector<RootCause> events_;  // signals / lost nodes in this round
  std::vector<std::string> restarts_;
};

}  // namespace dl
