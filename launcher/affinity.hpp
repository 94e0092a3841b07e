// CPU affinity: read the machine's topology from sysfs and compute, with a pure function, the CPU
// set of every local rank for a --cpu-bind mode. Tests feed canned sysfs trees (DETLITE_SYSFS_ROOT).
#pragma once

#include <set>
#include <string>
#include <vector>

namespace dl {

enum class CpuBind { None, Socket, SocketUniqueContiguous, SocketUniqueInterleaved, Core };

bool parse_cpu_bind(const std::string& s, CpuBind* out);
std::string cpu_bind_name(CpuBind mode);

struct Topology {
  struct Cpu {
    int id = 0;
    int core = 0;    // smallest CPU id among its hardware threads: identifies the physical core
    int socket = 0;  // NUMA node (or physical package when the kernel exposes no NUMA nodes)
  };
  std::vector<Cpu> cpus;        // online CPUs, sorted by id
  std::vector<int> gpu_socket;  // NUMA node of each NVIDIA GPU, in PCI address order
  std::vector<std::string> gpu_pci;
};

// Reads <root>/devices/system/{cpu,node} and <root>/bus/pci/devices. Returns false with *error when
// the CPU topology cannot be read at all.
bool read_topology(const std::string& sysfs_root, Topology* topo, std::string* error);

// Number of NVIDIA GPUs visible to workers: the sysfs GPUs filtered by CUDA_VISIBLE_DEVICES.
std::vector<int> visible_gpus(const Topology& topo, const std::string& cuda_visible_devices, bool has_cvd);

// The pure part. Local rank i uses GPU gpus[i % gpus.size()] (indices into topo.gpu_socket) when
// there are GPUs; otherwise ranks are spread evenly over the sockets in order. Only CPUs in
// `allowed` are handed out. Returns one CPU set per local rank (all empty for CpuBind::None).
std::vector<std::set<int>> compute_binding(const Topology& topo, CpuBind mode, int nproc,
                                           const std::vector<int>& gpus, const std::set<int>& allowed);

}  // namespace dl
