// Small helpers shared by the launcher's parts: clocks, strings, numbers, files, CPU lists, JSON text.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

namespace dl {

using EnvMap = std::map<std::string, std::string>;

// Seconds on the monotonic clock (for deadlines) and on the wall clock (for reports across nodes).
double mono_now();
double wall_now();

// The process environment as a map (taken once at start-up; tests pass their own maps).
EnvMap environ_map();
std::string env_get(const EnvMap& env, const std::string& key, const std::string& fallback = "");
bool env_has(const EnvMap& env, const std::string& key);

std::vector<std::string> split(const std::string& s, char sep);
std::string trim(const std::string& s);
bool starts_with(const std::string& s, const std::string& prefix);
std::string to_lower(std::string s);

// Strict number parsing: the whole string must be the number.
bool parse_int(const std::string& s, long long* out);
bool parse_double(const std::string& s, double* out);

bool read_text_file(const std::string& path, std::string* out);
bool write_file_atomic(const std::string& path, const std::string& text);
bool make_dirs(const std::string& path);      // mkdir -p
void remove_tree(const std::string& path);    // rm -rf of one directory we created

// CPU lists in the kernel's format ("0-3,8,10-11").
bool parse_cpulist(const std::string& s, std::set<int>* out);
std::string format_cpulist(const std::set<int>& cpus);

std::string json_escape(const std::string& s);   // with the surrounding quotes
std::string signal_name(int sig);                // "SIGTERM", or "signal 42"
int signal_from_name(const std::string& name);   // 0 when unknown
std::string errno_text(int err);

}  // namespace dl
