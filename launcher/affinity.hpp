// CPU affinity: the machine's topology from sysfs (tests feed canned trees through DETLITE_SYSFS_ROOT
// or --sysfs-root), and the CPU set of every local rank for a --cpu-bind mode.
#pragma once

#include "util.hpp"

namespace dl {
enum class CpuBind { None, Socket, SocketUniqueContiguous, SocketUniqueInterleaved, Core };

bool parse_cpu_bind(const std::string& s, CpuBind* out);
std::string cpu_bind_name(CpuBind mode);
std::string format_cpulist(const std::set<int>& cpus);  // the kernel's format: "0-3,8,10-11"

// The CPUs this launcher may hand out: DETLITE_ALLOWED_CPUS when set (tests: canned topologies), else
// the launcher's own affinity mask. Everything that counts CPUs uses this one set, so that
// --nproc-per-node cpu, OMP_NUM_THREADS and the --cpu-bind sets agree.
std::set<int> allowed_cpus(const EnvMap& env);

// NVIDIA GPUs in sysfs, filtered by CUDA_VISIBLE_DEVICES (0 when the topology cannot be read).
int visible_gpu_count(const std::string& sysfs_root, const EnvMap& env);

// One CPU set per local rank (each empty for CpuBind::None, or with *note when the topology cannot
// be read). Rank i belongs to the NUMA node of visible GPU i % #GPUs (PCI order) or, without GPUs, ranks
// are spread evenly over the nodes; only allowed_cpus() are handed out.
std::vector<std::set<int>> plan_binding(CpuBind mode, int nproc, const std::string& sysfs_root, const EnvMap& env,
                                        std::string* note);
}  // namespace dl
