// What happened to each rank (its fate), the root cause of a failed run, the failure report printed
// on every node, and the JSON summary written to the log directory.
#pragma once

#include <sys/types.h>

#include "args.hpp"
#include "plane.hpp"

namespace dl {
// Failed: exited non-zero or died on its own; Terminated: stopped by the launcher; Lost: its node disappeared.
enum class RankState { NotStarted, Running, Succeeded, Failed, Terminated, Lost };

struct Fate {  // aggregate: Fate{rank, local_rank, node, round, host[, state]}
  int rank = -1, local_rank = -1, node = -1, round = 0;
  std::string host;
  RankState state = RankState::NotStarted;
  pid_t pid = -1;
  int exit_code = -1;  // when it exited normally
  int signal = 0;      // when a signal killed it
  double t_exit = 0;   // wall clock, seconds
  double duration = 0;
  std::string error = "";  // exec failure or the message from its TORCHELASTIC_ERROR_FILE
  std::string tail = "";   // last lines of output

  int code() const { return signal ? 128 + signal : exit_code; }
  std::string how() const;  // "exited with code 7" / "was killed by SIGKILL"
  Msg to_msg() const;
  static Fate from_msg(const Msg& m);
  std::string json() const;
};

enum class CauseKind { Worker, Signal, Lost, Rendezvous, Unknown, ReportedByNode0 };

struct RootCause {  // aggregate: RootCause{kind, code, what[, node, t, fate]}
  CauseKind kind = CauseKind::Unknown;
  int code = 1;
  std::string what;  // one-line description
  int node = -1;
  double t = 0;      // wall clock: the earliest candidate is the root cause
  Fate fate = {};    // for CauseKind::Worker
};

// Multi-line report of a failed run (printed by every node, each line prefixed by the caller).
std::string format_report(const RootCause& root, const std::vector<Fate>& fates);

// The run as one node saw it: node 0's coordinator (every rank) or another node's agent (its own).
struct RunLog {
  int round = -1, world_size = 0;  // the latest round (0 first)
  std::vector<std::string> restarts;  // one line per restarted round
  std::vector<Fate> fates;            // the latest round's
};

// DIR/summary.json on node 0, DIR/summary-node<n>.json elsewhere; a warning when it cannot be written.
// The exit code is the root cause's, 0 without one.
void write_summary(const std::string& dir, const Options& opt, const RootCause* root, const RunLog& log);

// The "message" of a torchelastic error file ({"message": {"message": "...", ...}} or a string); ""
// when there is none or the file cannot be read.
std::string error_file_message(const std::string& path);
}  // namespace dl
