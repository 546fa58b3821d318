// Physical limits of the machine a benchmark runs on: streaming read bandwidth and peak FMA
// throughput, measured rather than taken from a data sheet (a VM's share of a socket is rarely
// what the data sheet says). Every kernel benchmark figure is printed beside these, so a reader
// can see how close to the hardware a kernel is.
#pragma once

#include <cstddef>
#include <string>

namespace alem {

// Best-of-many-slices read bandwidth in GB/s (1e9 bytes/s) with `threads` threads, each summing
// its share of a `bytes`-sized buffer with the widest vector loads available, timed on the
// threads' own CPU clocks (so time spent descheduled on a shared machine does not count). Use a
// size well above the L3 (e.g. 1 GiB) for DRAM bandwidth, or one that fits the L3 for it.
// `huge_pages` advises the buffer onto transparent 2 MiB pages (MADV_HUGEPAGE) or keeps it off
// them (MADV_NOHUGEPAGE): on 4 KiB pages one core's streaming reads pay a page walk per 4 KiB.
double measure_memory_bandwidth_gbs(size_t bytes, int threads, bool huge_pages = true);

// Read bandwidth in GB/s measured the way a decode step is: `passes` back-to-back reads of
// `bytes` (one step's weights), timed together on the wall clock, the `threads` threads each
// reading its own share of every pass and meeting at its end. A decode rate set beside it
// compares like with like: the same bytes in the same caches, the same clock, the same
// neighbours. The buffer (on huge pages) is `bytes` up to 1 GiB, read round and round past that.
double measure_step_read_gbs(size_t bytes, int threads, int passes);

// Peak f32 GFLOP/s (an FMA counts two) with `threads` threads, from a loop of independent
// fused multiply-adds at the widest vector width available (AVX-512, AVX2, else scalar), timed
// like the bandwidth on the threads' CPU clocks.
double measure_peak_gflops(int threads);

// Peak dot-product throughput with `threads` threads in GOP/s (a multiply-add counts two), from
// the same kind of loop on vdpbf16ps (kBf16) or vpdpbusd (kInt8); 0 when the CPU lacks it.
enum class DotKind { kBf16, kInt8 };
double measure_peak_dot_gops(DotKind kind, int threads);

// One line: CPU model, cores, cache sizes, the ISA flags that matter here and the instruction
// set the "cpu" backend uses.
std::string cpu_description();

// Seconds of CPU time the calling thread has used (CLOCK_THREAD_CPUTIME_ID).
double thread_cpu_seconds();

}  // namespace alem
