#include "affinity.hpp"

#include <sched.h>
#include <algorithm>

namespace dl {
namespace {
// A CPU list in the kernel's format ("0-3,8,10-11").
bool parse_cpulist(const std::string& text, std::set<int>* out) {
  for (const std::string& raw : trim(text).empty() ? std::vector<std::string>{} : split(trim(text), ',')) {
    const std::string part = trim(raw);
    const size_t dash = part.find('-');
    long long a = 0, b = 0;
    const std::string hi = dash == std::string::npos ? part : part.substr(dash + 1);
    if (!parse_int(part.substr(0, dash), &a) || !parse_int(hi, &b) || a < 0 || b < a || b > 1 << 20) return false;
    for (long long c = a; c <= b; ++c) out->insert(static_cast<int>(c));
  }
  return true;
}

const char* const kBindNames[] = {"none", "socket", "socket-unique-contiguous", "socket-unique-interleaved", "core"};

struct Topology {
  struct Cpu {
    int id = 0;
    int core = 0;    // smallest CPU id among its hardware threads: identifies the physical core
    int socket = 0;  // NUMA node (or physical package when the kernel exposes no NUMA nodes)
  };
  std::vector<Cpu> cpus;        // online CPUs
  std::vector<int> gpu_socket;  // NUMA node of each NVIDIA GPU, in PCI address order
};

// "cpu12" -> 12 for entries named prefix + digits.
bool numbered(const std::string& name, const std::string& prefix, int* out) {
  long long v = 0;
  const std::string rest = starts_with(name, prefix) ? name.substr(prefix.size()) : "";
  if (rest.find_first_not_of("0123456789") != std::string::npos || !parse_int(rest, &v)) return false;
  *out = static_cast<int>(v);
  return true;
}

bool read_int_file(const std::string& path, long long* out) {  // decimal, or hex with 0x
  std::string text;
  if (!read_text_file(path, &text)) return false;
  const std::string t = trim(text);
  return starts_with(t, "0x") ? parse_int(t.substr(2), out, 16) : parse_int(t, out);
}

// Reads <root>/devices/system/{cpu,node} and <root>/bus/pci/devices; false when there are no CPUs.
bool read_topology(const std::string& root, Topology* topo, std::string* error) {
  const std::string cpu_dir = root + "/devices/system/cpu", pci = root + "/bus/pci/devices";
  std::set<int> online;
  std::string text;
  const bool have_online = read_text_file(cpu_dir + "/online", &text) && parse_cpulist(text, &online);
  std::map<int, int> numa_of;  // cpu -> NUMA node
  for (const std::string& name : list_dir(root + "/devices/system/node")) {
    int node = 0;
    std::set<int> cpus;
    if (numbered(name, "node", &node) && read_text_file(root + "/devices/system/node/" + name + "/cpulist", &text) &&
        parse_cpulist(text, &cpus))
      for (int c : cpus) numa_of[c] = node;
  }
  for (const std::string& name : list_dir(cpu_dir)) {
    Topology::Cpu cpu;
    std::set<int> siblings;
    long long pkg = 0;
    if (!numbered(name, "cpu", &cpu.id) || (have_online && !online.count(cpu.id))) continue;
    const std::string t = cpu_dir + "/" + name + "/topology/";
    const bool sib = read_text_file(t + "thread_siblings_list", &text) && parse_cpulist(text, &siblings);
    cpu.core = sib && !siblings.empty() ? *siblings.begin() : cpu.id;
    if (numa_of.count(cpu.id)) cpu.socket = numa_of[cpu.id];
    else if (read_int_file(t + "physical_package_id", &pkg) && pkg >= 0) cpu.socket = static_cast<int>(pkg);
    topo->cpus.push_back(cpu);
  }
  if (topo->cpus.empty()) return fail(error, "no CPUs found under " + cpu_dir);
  for (const std::string& addr : list_dir(pci)) {
    long long vendor = 0, cls = 0, numa = -1;
    const std::string dev = pci + "/" + addr + "/";
    if (!read_int_file(dev + "vendor", &vendor) || vendor != 0x10de || !read_int_file(dev + "class", &cls)) continue;
    if ((cls >> 8) != 0x0300 && (cls >> 8) != 0x0302) continue;  // VGA or 3D controller
    if (!read_int_file(dev + "numa_node", &numa) || numa < 0) numa = 0;
    topo->gpu_socket.push_back(static_cast<int>(numa));
  }
  return true;
}

std::vector<int> visible_gpus(const Topology& topo, const EnvMap& env) {
  std::vector<int> out;
  const int n = static_cast<int>(topo.gpu_socket.size());
  if (!env.count("CUDA_VISIBLE_DEVICES"))
    for (int i = 0; i < n; ++i) out.push_back(i);
  else
    for (const std::string& raw : split(env_get(env, "CUDA_VISIBLE_DEVICES"), ',')) {
      long long idx = 0;
      // UUIDs and MIG names cannot be mapped to PCI addresses without NVML: stop at the first one,
      // as CUDA itself stops at the first invalid entry.
      if (!parse_int(trim(raw), &idx) || idx < 0 || idx >= n) break;
      out.push_back(static_cast<int>(idx));
    }
  return out;
}

// The socket of each rank: its GPU's NUMA node, else (no GPU, or a node without allowed CPUs)
// spread evenly over the sockets in order.
std::vector<int> rank_sockets(const Topology& topo, int nproc, const std::vector<int>& gpus,
                              const std::vector<int>& socket_ids) {
  std::vector<int> socket_of;
  for (int r = 0; r < nproc; ++r) {
    const int g = gpus.empty() ? -1 : gpus[static_cast<size_t>(r) % gpus.size()];
    int s = g >= 0 && g < static_cast<int>(topo.gpu_socket.size()) ? topo.gpu_socket[static_cast<size_t>(g)] : -1;
    if (std::find(socket_ids.begin(), socket_ids.end(), s) == socket_ids.end())
      s = socket_ids[static_cast<size_t>(r) * socket_ids.size() / static_cast<size_t>(nproc)];
    socket_of.push_back(s);
  }
  return socket_of;
}

// The physical cores (indices into `ncores` cores of its socket) for the j-th of n ranks on a socket.
std::vector<size_t> pick_cores(CpuBind mode, size_t j, size_t n, size_t ncores) {
  if (mode == CpuBind::Socket) return pick_cores(CpuBind::SocketUniqueContiguous, 0, 1, ncores);  // all of them
  if (ncores < n) return {j % ncores};  // more ranks than cores: ranks share cores round-robin
  const size_t k = ncores / n;
  std::vector<size_t> picked;
  for (size_t t = 0; t < (mode == CpuBind::Core ? 1 : k); ++t)  // Core: one whole physical core
    picked.push_back(mode == CpuBind::SocketUniqueInterleaved ? j + t * n : j * k + t);
  return picked;
}
}  // namespace

bool parse_cpu_bind(const std::string& raw, CpuBind* out) {
  std::string s = to_lower(trim(raw));
  std::replace(s.begin(), s.end(), '_', '-');
  const auto it = std::find(std::begin(kBindNames), std::end(kBindNames), s);
  if (it != std::end(kBindNames)) *out = static_cast<CpuBind>(it - std::begin(kBindNames));
  return it != std::end(kBindNames);
}

std::string cpu_bind_name(CpuBind mode) { return kBindNames[static_cast<int>(mode)]; }

std::string format_cpulist(const std::set<int>& cpus) {
  std::string s;
  for (auto it = cpus.begin(); it != cpus.end();) {
    const int start = *it;
    int end = start;
    while (++it != cpus.end() && *it == end + 1) end = *it;
    s += (s.empty() ? "" : ",") + std::to_string(start) + (end != start ? "-" + std::to_string(end) : "");
  }
  return s;
}

std::set<int> allowed_cpus(const EnvMap& env) {
  std::set<int> out;
  const std::string forced = env_get(env, "DETLITE_ALLOWED_CPUS");
  if (!forced.empty() && parse_cpulist(forced, &out)) return out;
  out.clear();
  cpu_set_t set;
  CPU_ZERO(&set);
  const bool ok = sched_getaffinity(0, sizeof set, &set) == 0;
  for (int c = 0; ok && c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) out.insert(c);
  return out;
}

int visible_gpu_count(const std::string& sysfs_root, const EnvMap& env) {
  Topology topo;
  std::string err;
  return read_topology(sysfs_root, &topo, &err) ? static_cast<int>(visible_gpus(topo, env).size()) : 0;
}

std::vector<std::set<int>> plan_binding(CpuBind mode, int nproc, const std::string& sysfs_root, const EnvMap& env,
                                        std::string* note) {
  Topology topo;
  std::string err;
  std::vector<std::set<int>> result(static_cast<size_t>(std::max(nproc, 0)));
  if (mode == CpuBind::None) return result;
  if (!read_topology(sysfs_root, &topo, &err)) {
    *note = "warning: --cpu-bind " + cpu_bind_name(mode) + " ignored: " + err;
    return result;
  }
  const std::set<int> allowed = allowed_cpus(env);
  // socket -> physical cores (in order of their first CPU) -> allowed CPUs of that core
  std::map<int, std::map<int, std::set<int>>> sockets;
  for (const Topology::Cpu& c : topo.cpus)
    if (allowed.empty() || allowed.count(c.id)) sockets[c.socket][c.core].insert(c.id);
  if (sockets.empty() || nproc <= 0) return result;
  std::vector<int> socket_ids;
  for (const auto& s : sockets) socket_ids.push_back(s.first);
  std::map<int, std::vector<int>> ranks_on;  // socket -> its ranks in order
  const std::vector<int> socket_of = rank_sockets(topo, nproc, visible_gpus(topo, env), socket_ids);
  for (int r = 0; r < nproc; ++r) ranks_on[socket_of[static_cast<size_t>(r)]].push_back(r);
  for (const auto& entry : ranks_on) {
    std::vector<const std::set<int>*> cores;
    for (const auto& c : sockets[entry.first]) cores.push_back(&c.second);
    const std::vector<int>& ranks = entry.second;
    for (size_t j = 0; j < ranks.size(); ++j)
      for (size_t idx : pick_cores(mode, j, ranks.size(), cores.size()))
        result[static_cast<size_t>(ranks[j])].insert(cores[idx]->begin(), cores[idx]->end());
  }
  return result;
}
}  // namespace dl
