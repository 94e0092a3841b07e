#include "report.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <algorithm>
#include <cstdlib>

namespace dl {
namespace {
// The spellings in summary.json and on the wire.
const char* const kStateNames[] = {"not_started", "running", "succeeded", "failed", "terminated", "lost"};
const char* const kCauseNames[] = {"worker", "signal", "lost", "rendezvous", "unknown", "reported by node 0"};

std::vector<Fate> by_rank(std::vector<Fate> fates) {
  std::sort(fates.begin(), fates.end(), [](const Fate& a, const Fate& b) { return a.rank < b.rank; });
  return fates;
}

void append_utf8(unsigned v, std::string* out) {  // below U+10000, as \uXXXX escapes give
  if (v >= 0x800) *out += static_cast<char>(0xE0 | (v >> 12));
  if (v >= 0x800) *out += static_cast<char>(0x80 | ((v >> 6) & 0x3F));
  else if (v >= 0x80) *out += static_cast<char>(0xC0 | (v >> 6));
  *out += static_cast<char>(v >= 0x80 ? 0x80 | (v & 0x3F) : v);
}

// Reads the JSON string literal at text[i] == '"'; false on malformed input.
bool read_json_string(const std::string& text, size_t i, std::string* out) {
  for (++i; i < text.size() && text[i] != '"'; ++i) {
    if (text[i] != '\\') {
      *out += text[i];
      continue;
    }
    if (++i >= text.size() || (text[i] == 'u' && i + 4 >= text.size())) return false;
    const char e = text[i];
    if (e == 'u') append_utf8(static_cast<unsigned>(std::strtoul(text.substr(i + 1, 4).c_str(), nullptr, 16)), out);
    if (e == 'u') i += 4;
    else if (e == 'n' || e == 't') *out += e == 'n' ? '\n' : '\t';
    else if (e != 'r' && e != 'b' && e != 'f') *out += e;
  }
  return i < text.size();
}

const char* rank_state_name(RankState s) { return kStateNames[static_cast<int>(s)]; }
}  // namespace

std::string Fate::how() const {
  if (state == RankState::NotStarted) return "was not started";
  if (state == RankState::Lost) return "was lost with its node";
  if (signal) return "was killed by " + signal_name(signal);
  return "exited with code " + std::to_string(exit_code);
}

Msg Fate::to_msg() const {
  Msg m("FATE");
  m.set("rank", rank).set("lrank", local_rank).set("node", node).set("round", round).set("host", host);
  m.set("pid", static_cast<long long>(pid)).set("state", rank_state_name(state)).set("code", exit_code);
  m.set("sig", signal).set_num("t", t_exit).set_num("dur", duration).set("error", error).set("tail", tail);
  return m;
}

Fate Fate::from_msg(const Msg& m) {
  auto num = [&](const char* key, long long fallback) { return static_cast<int>(m.get_int(key, fallback)); };
  Fate f{num("rank", -1), num("lrank", -1), num("node", -1), num("round", 0), m.get("host")};
  f.pid = static_cast<pid_t>(m.get_int("pid", -1));
  for (int s = 0; s < 6; ++s)
    if (m.get("state") == kStateNames[s]) f.state = static_cast<RankState>(s);
  f.exit_code = num("code", -1);
  f.signal = num("sig", 0);
  f.t_exit = m.get_num("t");
  f.duration = m.get_num("dur");
  f.error = m.get("error");
  f.tail = m.get("tail");
  return f;
}

std::string Fate::json() const {
  std::string s = "{\"rank\": " + std::to_string(rank) + ", \"local_rank\": " + std::to_string(local_rank) +
                  ", \"node\": " + std::to_string(node) + ", \"host\": " + json_escape(host) +
                  ", \"pid\": " + (pid > 0 ? std::to_string(pid) : "null") +
                  ", \"state\": " + json_escape(rank_state_name(state)) +
                  ", \"exit_code\": " + (!signal && exit_code >= 0 ? std::to_string(exit_code) : "null") +
                  ", \"signal\": " + (signal ? json_escape(signal_name(signal)) : "null") +
                  ", \"round\": " + std::to_string(round) + ", \"duration_s\": " + fmt_num(duration, "%.3f");
  if (!error.empty()) s += ", \"error\": " + json_escape(error);
  if (state == RankState::Failed && !tail.empty()) s += ", \"tail\": " + json_escape(tail);
  return s + "}";
}

std::string format_report(const RootCause& root, const std::vector<Fate>& fates) {
  std::string out = "job failed, exit code " + std::to_string(root.code) + "\n";
  const bool worker = root.kind == CauseKind::Worker;
  if (worker) {
    const Fate& f = root.fate;
    out += "root cause: rank " + std::to_string(f.rank) + " (local rank " + std::to_string(f.local_rank) +
           ", node " + std::to_string(f.node) + ", host " + f.host + ", pid " + std::to_string(f.pid) + ") " +
           f.how() + " after " + fmt_num(f.duration, "%.1f") + " s\n";
    if (!f.error.empty())
      for (const std::string& l : split(f.error, '\n')) out += "  error: " + l + "\n";
    if (!f.tail.empty()) {
      out += "  last output of rank " + std::to_string(f.rank) + ":\n";
      for (const std::string& l : split(f.tail, '\n')) out += "  | " + l + "\n";
    }
  } else {
    out += "root cause: " + root.what + "\n";
  }
  std::string line;  // one line summarising everybody else
  for (const Fate& f : by_rank(fates)) {
    if (worker && f.rank == root.fate.rank) continue;
    line += (line.empty() ? "" : ", ") + std::to_string(f.rank) + " " + rank_state_name(f.state);
    if (f.state == RankState::Failed || f.state == RankState::Terminated) line += " (" + f.how() + ")";
  }
  if (!line.empty()) out += "other ranks: " + line + "\n";
  return out;
}

void write_summary(const std::string& dir, const Options& opt, const RootCause* root, const RunLog& log) {
  auto num = [](long long v) { return std::to_string(v); };
  std::string out = "{\n  \"launcher\": \"detlite-launch\",\n  \"run_id\": " + json_escape(opt.run_id) +
                    ",\n  \"exit_code\": " + num(root ? root->code : 0) + ",\n  \"nnodes\": " + num(opt.nnodes) +
                    ",\n  \"node_rank\": " + num(opt.node_rank) + ",\n  \"world_size\": " + num(log.world_size) +
                    ",\n  \"rounds\": " + num(log.round + 1) + ",\n  \"max_restarts\": " + num(opt.max_restarts) +
                    ",\n  \"root_cause\": ";
  if (root)
    out += "{\"kind\": " + json_escape(kCauseNames[static_cast<int>(root->kind)]) + ", \"code\": " + num(root->code) +
           ", \"node\": " + num(root->node) + ", \"what\": " + json_escape(root->what) +
           (root->kind == CauseKind::Worker ? ", \"rank\": " + root->fate.json() : "") + "}";
  out += std::string(root ? "" : "null") + ",\n  \"restarts\": " + json_list(log.restarts) + ",\n  \"ranks\": [\n";
  const std::vector<Fate> fates = by_rank(log.fates);
  for (size_t i = 0; i < fates.size(); ++i) out += "    " + fates[i].json() + (i + 1 < fates.size() ? ",\n" : "\n");
  out += "  ]\n}\n";
  const std::string path =
      dir + (opt.node_rank == 0 ? "/summary.json" : "/summary-node" + num(opt.node_rank) + ".json");
  const std::string tmp = path + ".tmp." + num(::getpid());  // written whole, then renamed
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const bool ok = fd >= 0 && write_all(fd, out.data(), out.size());
  if (fd >= 0) ::close(fd);
  if (ok && ::rename(tmp.c_str(), path.c_str()) == 0) return;
  ::unlink(tmp.c_str());
  log_line("warning: cannot write " + path);
}

std::string error_file_message(const std::string& path) {
  std::string text;
  size_t pos = 0;
  if (!read_text_file(path, &text)) return "";
  // Follow "message" keys: the value is either the string we want or an object holding another one.
  for (int depth = 0; depth < 4; ++depth) {
    const size_t key = text.find("\"message\"", pos);
    const size_t colon = key == std::string::npos ? key : text.find(':', key + 9);
    const size_t v = colon == std::string::npos ? colon : text.find_first_not_of(" \t\r\n", colon + 1);
    std::string out;
    if (v != std::string::npos && text[v] == '"') return read_json_string(text, v, &out) ? out : "";
    if (v == std::string::npos || text[v] != '{') return "";
    pos = v;
  }
  return "";
}
}  // namespace dl
