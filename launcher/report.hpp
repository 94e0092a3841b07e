// What happened to each rank (its "fate"), the root cause of a failed run, the failure report
// printed on every node, and the JSON summary written to the log directory.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "control.hpp"

namespace dl {

struct Fate {
  int rank = -1, local_rank = -1, node = -1, round = 0;
  std::string host;
  pid_t pid = -1;
  // "succeeded", "failed" (exited non-zero or died on its own), "terminated" (stopped by the
  // launcher), "lost" (its node disappeared), "not_started"
  std::string state = "not_started";
  int exit_code = -1;  // when it exited normally
  int signal = 0;      // when a signal killed it
  double t_exit = 0;   // wall clock, seconds
  double duration = 0;
  std::string error;   // exec failure or the message from its TORCHELASTIC_ERROR_FILE
  std::string tail;    // last lines of output

  int code() const { return signal ? 128 + signal : exit_code; }
  std::string how() const;  // "exited with code 7" / "was killed by SIGKILL"
  Msg to_msg() const;
  static Fate from_msg(const Msg& m);
  std::string json() const;
};

struct RootCause {
  std::string kind;  // "worker", "signal", "lost", "rendezvous"
  double t = 0;
  int code = 1;
  int node = -1;
  std::string what;  // one-line description
  Fate fate;         // for kind == "worker"
};

// Multi-line report of a failed run (printed by every node, each line prefixed by the caller).
std::string format_report(const RootCause& root, const std::vector<Fate>& fates, int code);

struct Summary {
  std::string run_id;
  int exit_code = 0;
  int nnodes = 1, node_rank = 0, world_size = 0, rounds = 1, max_restarts = 0;
  bool has_root = false;
  RootCause root;
  std::vector<std::string> restarts;  // one line per restarted round
  std::vector<Fate> fates;            // final round
};
std::string summary_json(const Summary& s);

// The "message" of a torchelastic error file ({"message": {"message": "...", ...}} or a string).
std::string error_file_message(const std::string& json_text);

}  // namespace dl
