#include "report.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "util.hpp"

namespace dl {

std::string Fate::how() const {
  if (state == "not_started") return "was not started";
  if (state == "lost") return "was lost with its node";
  if (signal) return "was killed by " + signal_name(signal);
  return "exited with code " + std::to_string(exit_code);
}

Msg Fate::to_msg() const {
  Msg m("FATE");
  m.set("rank", rank).set("lrank", local_rank).set("node", node).set("round", round).set("host", host);
  m.set("pid", static_cast<long long>(pid)).set("state", state).set("code", exit_code).set("sig", signal);
  m.set_num("t", t_exit).set_num("dur", duration).set("error", error).set("tail", tail);
  return m;
}

Fate Fate::from_msg(const Msg& m) {
  Fate f;
  f.rank = static_cast<int>(m.get_int("rank", -1));
  f.local_rank = static_cast<int>(m.get_int("lrank", -1));
  f.node = static_cast<int>(m.get_int("node", -1));
  f.round = static_cast<int>(m.get_int("round", 0));
  f.host = m.get("host");
  f.pid = static_cast<pid_t>(m.get_int("pid", -1));
  f.state = m.get("state", "not_started");
  f.exit_code = static_cast<int>(m.get_int("code", -1));
  f.signal = static_cast<int>(m.get_int("sig", 0));
  f.t_exit = m.get_num("t");
  f.duration = m.get_num("dur");
  f.error = m.get("error");
  f.tail = m.get("tail");
  return f;
}

std::string Fate::json() const {
  char dur[32];
  std::snprintf(dur, sizeof dur, "%.3f", duration);
  std::string s = "{\"rank\": " + std::to_string(rank) + ", \"local_rank\": " + std::to_string(local_rank) +
                  ", \"node\": " + std::to_string(node) + ", \"host\": " + json_escape(host) +
                  ", \"pid\": " + (pid > 0 ? std::to_string(pid) : "null") + ", \"state\": " + json_escape(state) +
                  ", \"exit_code\": " + (!signal && exit_code >= 0 ? std::to_string(exit_code) : "null") +
                  ", \"signal\": " + (signal ? json_escape(signal_name(signal)) : "null") +
                  ", \"round\": " + std::to_string(round) + ", \"duration_s\": " + dur;
  if (!error.empty()) s += ", \"error\": " + json_escape(error);
  if (state == "failed" && !tail.empty()) s += ", \"tail\": " + json_escape(tail);
  return s + "}";
}

std::string format_report(const RootCause& root, const std::vector<Fate>& fates, int code) {
  std::string out = "job failed, exit code " + std::to_string(code) + "\n";
  if (root.kind == "worker") {
    const Fate& f = root.fate;
    char dur[32];
    std::snprintf(dur, sizeof dur, "%.1f", f.duration);
    out += "root cause: rank " + std::to_string(f.rank) + " (local rank " + std::to_string(f.local_rank) +
           ", node " + std::to_string(f.node) + ", host " + f.host + ", pid " + std::to_string(f.pid) + ") " +
           f.how() + " after " + dur + " s\n";
    if (!f.error.empty())
      for (const std::string& l : split(f.error, '\n')) out += "  error: " + l + "\n";
    if (!f.tail.empty()) {
      out += "  last output of rank " + std::to_string(f.rank) + ":\n";
      for (const std::string& l : split(f.tail, '\n')) out += "  | " + l + "\n";
    }
  } else {
    out += "root cause: " + root.what + "\n";
  }
  // One line summarising everybody else.
  std::vector<Fate> others = fates;
  std::sort(others.begin(), others.end(), [](const Fate& a, const Fate& b) { return a.rank < b.rank; });
  std::string line;
  for (const Fate& f : others) {
    if (root.kind == "worker" && f.rank == root.fate.rank) continue;
    if (!line.empty()) line += ", ";
    line += std::to_string(f.rank) + " " + f.state;
    if (f.state == "failed" || f.state == "terminated") line += " (" + f.how() + ")";
  }
  if (!line.empty()) out += "other ranks: " + line + "\n";
  return out;
}

std::string summary_json(const Summary& s) {
  std::string out = "{\n";
  out += "  \"launcher\": \"detlite-launch\",\n";
  out += "  \"run_id\": " + json_escape(s.run_id) + ",\n";
  out += "  \"exit_code\": " + std::to_string(s.exit_code) + ",\n";
  out += "  \"nnodes\": " + std::to_string(s.nnodes) + ",\n";
  out += "  \"node_rank\": " + std::to_string(s.node_rank) + ",\n";
  out += "  \"world_size\": " + std::to_string(s.world_size) + ",\n";
  out += "  \"rounds\": " + std::to_string(s.rounds) + ",\n";
  out += "  \"max_restarts\": " + std::to_string(s.max_restarts) + ",\n";
  if (s.has_root) {
    out += "  \"root_cause\": {\"kind\": " + json_escape(s.root.kind) + ", \"code\": " + std::to_string(s.root.code) +
           ", \"node\": " + std::to_string(s.root.node) + ", \"what\": " + json_escape(s.root.what);
    if (s.root.kind == "worker") out += ", \"rank\": " + s.root.fate.json();
    out += "},\n";
  } else {
    out += "  \"root_cause\": null,\n";
  }
  out += "  \"restarts\": [";
  for (size_t i = 0; i < s.restarts.size(); ++i) out += (i ? ", " : "") + json_escape(s.restarts[i]);
  out += "],\n  \"ranks\": [\n";
  std::vector<Fate> fates = s.fates;
  std::sort(fates.begin(), fates.end(), [](const Fate& a, const Fate& b) { return a.rank < b.rank; });
  for (size_t i = 0; i < fates.size(); ++i) out += "    " + fates[i].json() + (i + 1 < fates.size() ? ",\n" : "\n");
  out += "  ]\n}\n";
  return out;
}

namespace {

// Reads a JSON string literal starting at text[i] == '"'; returns false on malformed input.
bool read_json_string(const std::string& text, size_t i, std::string* out) {
  out->clear();
  for (++i; i < text.size(); ++i) {
    char c = text[i];
    if (c == '"') return true;
    if (c != '\\') {
      *out += c;
      continue;
    }
    if (++i >= text.size()) return false;
    switch (text[i]) {
      case 'n': *out += '\n'; break;
      case 't': *out += '\t'; break;
      case 'r': break;
      case 'b': case 'f': break;
      case 'u': {
        if (i + 4 >= text.size()) return false;
        unsigned v = static_cast<unsigned>(std::strtoul(text.substr(i + 1, 4).c_str(), nullptr, 16));
        if (v < 0x80) *out += static_cast<char>(v);
        else if (v < 0x800) {
          *out += static_cast<char>(0xC0 | (v >> 6));
          *out += static_cast<char>(0x80 | (v & 0x3F));
        } else {
          *out += static_cast<char>(0xE0 | (v >> 12));
          *out += static_cast<char>(0x80 | ((v >> 6) & 0x3F));
          *out += static_cast<char>(0x80 | (v & 0x3F));
        }
        i += 4;
        break;
      }
      default: *out += text[i];
    }
  }
  return false;
}

}  // namespace

std::string error_file_message(const std::string& text) {
  size_t pos = 0;
  // Follow "message" keys: the value is either the string we want or an object holding another one.
  for (int depth = 0; depth < 4; ++depth) {
    size_t key = text.find("\"message\"", pos);
    if (key == std::string::npos) return "";
    size_t colon = text.find(':', key + 9);
    if (colon == std::string::npos) return "";
    size_t v = text.find_first_not_of(" \t\r\n", colon + 1);
    if (v == std::string::npos) return "";
    if (text[v] == '"') {
      std::string out;
      return read_json_string(text, v, &out) ? out : "";
    }
    if (text[v] != '{') return "";
    pos = v;
  }
  return "";
}

}  // namespace dl
