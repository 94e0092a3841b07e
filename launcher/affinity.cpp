#include "affinity.hpp"

#include <dirent.h>

#include <algorithm>
#include <map>

#include "util.hpp"

namespace dl {

bool parse_cpu_bind(const std::string& raw, CpuBind* out) {
  std::string s = to_lower(trim(raw));
  for (char& c : s)
    if (c == '_') c = '-';
  if (s == "none") *out = CpuBind::None;
  else if (s == "socket") *out = CpuBind::Socket;
  else if (s == "socket-unique-contiguous") *out = CpuBind::SocketUniqueContiguous;
  else if (s == "socket-unique-interleaved") *out = CpuBind::SocketUniqueInterleaved;
  else if (s == "core") *out = CpuBind::Core;
  else return false;
  return true;
}

std::string cpu_bind_name(CpuBind mode) {
  switch (mode) {
    case CpuBind::None: return "none";
    case CpuBind::Socket: return "socket";
    case CpuBind::SocketUniqueContiguous: return "socket-unique-contiguous";
    case CpuBind::SocketUniqueInterleaved: return "socket-unique-interleaved";
    case CpuBind::Core: return "core";
  }
  return "none";
}

namespace {

std::vector<std::string> list_dir(const std::string& path) {
  std::vector<std::string> names;
  DIR* d = opendir(path.c_str());
  if (!d) return names;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

// "cpu12" -> 12 for entries named prefix + digits.
bool numbered(const std::string& name, const std::string& prefix, int* out) {
  if (!starts_with(name, prefix) || name.size() == prefix.size()) return false;
  long long v = 0;
  std::string rest = name.substr(prefix.size());
  if (rest.find_first_not_of("0123456789") != std::string::npos || !parse_int(rest, &v)) return false;
  *out = static_cast<int>(v);
  return true;
}

bool read_int_file(const std::string& path, long long* out) {
  std::string text;
  if (!read_text_file(path, &text)) return false;
  std::string t = trim(text);
  if (starts_with(t, "0x")) {
    try {
      *out = std::stoll(t.substr(2), nullptr, 16);
      return true;
    } catch (...) {
      return false;
    }
  }
  return parse_int(t, out);
}

}  // namespace

bool read_topology(const std::string& root, Topology* topo, std::string* error) {
  *topo = Topology{};
  const std::string cpu_dir = root + "/devices/system/cpu";
  std::set<int> online;
  std::string text;
  bool have_online = read_text_file(cpu_dir + "/online", &text) && parse_cpulist(text, &online);

  std::map<int, int> numa_of;  // cpu -> NUMA node
  for (const std::string& name : list_dir(root + "/devices/system/node")) {
    int node = 0;
    std::set<int> cpus;
    if (!numbered(name, "node", &node)) continue;
    if (read_text_file(root + "/devices/system/node/" + name + "/cpulist", &text) &&
        parse_cpulist(text, &cpus))
      for (int c : cpus) numa_of[c] = node;
  }

  for (const std::string& name : list_dir(cpu_dir)) {
    int id = 0;
    if (!numbered(name, "cpu", &id)) continue;
    if (have_online && !online.count(id)) continue;
    Topology::Cpu cpu;
    cpu.id = id;
    cpu.core = id;
    std::set<int> siblings;
    const std::string t = cpu_dir + "/" + name + "/topology/";
    if (read_text_file(t + "thread_siblings_list", &text) && parse_cpulist(text, &siblings) &&
        !siblings.empty())
      cpu.core = *siblings.begin();
    long long pkg = 0;
    if (numa_of.count(id)) cpu.socket = numa_of[id];
    else if (read_int_file(t + "physical_package_id", &pkg) && pkg >= 0) cpu.socket = static_cast<int>(pkg);
    topo->cpus.push_back(cpu);
  }
  std::sort(topo->cpus.begin(), topo->cpus.end(),
            [](const Topology::Cpu& a, const Topology::Cpu& b) { return a.id < b.id; });
  if (topo->cpus.empty()) {
    *error = "no CPUs found under " + cpu_dir;
    return false;
  }

  const std::string pci = root + "/bus/pci/devices";
  for (const std::string& addr : list_dir(pci)) {
    long long vendor = 0, cls = 0, numa = -1;
    if (!read_int_file(pci + "/" + addr + "/vendor", &vendor) || vendor != 0x10de) continue;
    if (!read_int_file(pci + "/" + addr + "/class", &cls)) continue;
    if ((cls >> 8) != 0x0300 && (cls >> 8) != 0x0302) continue;  // VGA or 3D controller
    if (!read_int_file(pci + "/" + addr + "/numa_node", &numa) || numa < 0) numa = 0;
    topo->gpu_pci.push_back(addr);
    topo->gpu_socket.push_back(static_cast<int>(numa));
  }
  return true;
}

std::vector<int> visible_gpus(const Topology& topo, const std::string& cvd, bool has_cvd) {
  std::vector<int> out;
  const int n = static_cast<int>(topo.gpu_socket.size());
  if (!has_cvd) {
    for (int i = 0; i < n; ++i) out.push_back(i);
    return out;
  }
  for (const std::string& raw : split(cvd, ',')) {
    long long idx = 0;
    // UUIDs and MIG names cannot be mapped to PCI addresses without NVML: stop at the first one,
    // as CUDA itself stops at the first invalid entry.
    if (!parse_int(trim(raw), &idx) || idx < 0 || idx >= n) break;
    out.push_back(static_cast<int>(idx));
  }
  return out;
}

std::vector<std::set<int>> compute_binding(const Topology& topo, CpuBind mode, int nproc,
                                           const std::vector<int>& gpus, const std::set<int>& allowed) {
  std::vector<std::set<int>> result(static_cast<size_t>(std::max(nproc, 0)));
  if (mode == CpuBind::None || nproc <= 0) return result;

  // socket -> physical cores (in order of their first CPU) -> allowed CPUs of that core
  std::map<int, std::map<int, std::set<int>>> sockets;
  for (const Topology::Cpu& c : topo.cpus)
    if (allowed.empty() || allowed.count(c.id)) sockets[c.socket][c.core].insert(c.id);
  if (sockets.empty()) return result;
  std::vector<int> socket_ids;
  for (const auto& s : sockets) socket_ids.push_back(s.first);

  // Which socket each rank belongs to.
  std::vector<int> socket_of(static_cast<size_t>(nproc));
  for (int r = 0; r < nproc; ++r) {
    int s = -1;
    if (!gpus.empty()) {
      int g = gpus[static_cast<size_t>(r) % gpus.size()];
      if (g >= 0 && g < static_cast<int>(topo.gpu_socket.size())) s = topo.gpu_socket[static_cast<size_t>(g)];
      if (!sockets.count(s)) s = -1;  // the GPU's node has no allowed CPUs: fall back to spreading
    }
    if (s < 0) {
      size_t k = static_cast<size_t>(r) * socket_ids.size() / static_cast<size_t>(nproc);
      s = socket_ids[k];
    }
    socket_of[static_cast<size_t>(r)] = s;
  }

  std::map<int, std::vector<int>> ranks_on;  // socket -> its ranks in order
  for (int r = 0; r < nproc; ++r) ranks_on[socket_of[static_cast<size_t>(r)]].push_back(r);

  for (const auto& entry : ranks_on) {
    const auto& cores_map = sockets[entry.first];
    std::vector<const std::set<int>*> cores;
    for (const auto& c : cores_map) cores.push_back(&c.second);
    const std::vector<int>& ranks = entry.second;
    const size_t n = ranks.size(), ncores = cores.size();
    for (size_t j = 0; j < n; ++j) {
      std::set<int>& out = result[static_cast<size_t>(ranks[j])];
      if (mode == CpuBind::Socket) {
        for (const auto* c : cores) out.insert(c->begin(), c->end());
        continue;
      }
      if (ncores < n) {  // more ranks than cores: ranks share cores round-robin
        out.insert(cores[j % ncores]->begin(), cores[j % ncores]->end());
        continue;
      }
      const size_t k = ncores / n;
      std::vector<size_t> picked;
      if (mode == CpuBind::SocketUniqueContiguous) {
        for (size_t t = 0; t < k; ++t) picked.push_back(j * k + t);
      } else if (mode == CpuBind::SocketUniqueInterleaved) {
        for (size_t t = 0; t < k; ++t) picked.push_back(j + t * n);
      } else {  // Core: one whole physical core per rank
        picked.push_back(j * k);
      }
      for (size_t idx : picked) out.insert(cores[idx]->begin(), cores[idx]->end());
    }
  }
  return result;
}

}  // namespace dl
