// cpu_hugepage_copy: a contiguous copy of a CPU tensor whose storage starts on a 2 MiB boundary and is advised to
// the kernel as transparent-huge-page memory (madvise(MADV_HUGEPAGE)) before its first touch.
//
// Why: the small-M kernels stream each packed weight once per call, one sequential stream per thread, and with 4 KiB
// pages every 4 KiB of that stream is a new TLB entry (a page walk) and a place where the hardware prefetchers stop
// (they do not cross pages). PyTorch's CPU allocator advises huge pages only when THP_MEM_ALLOC_ENABLE=1 is set
// before its first allocation, and most Linux distributions ship THP in "madvise" mode, so packed weights normally
// sit on 4 KiB pages. Measured on a 2-vCPU Xeon (AMX, KVM), M=1, 16 distinct 4096x11008 layers, 2 threads: the
// fused 2:4 + int4 kernel 1.38-1.42 ms per layer on 4 KiB pages against 1.00-1.06 ms with huge pages
// (benchmarks/README.md has the full table). Where THP is off ("never") or the platform is not Linux the copy is
// an ordinary one: nothing fails, nothing changes but the speed.
//
// The storage is freed by the tensor's deleter; clones, .to() copies and deep copies are ordinary tensors again.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace slimformer {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

at::Tensor cpu_hugepage_copy(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "cpu_hugepage_copy needs a CPU tensor, got one on ", t.device());
  const at::Tensor src = t.contiguous();
  const size_t nbytes = src.nbytes();
#if defined(__linux__)
  if (nbytes >= kHugePage) {
    // Fresh pages straight from mmap: malloc may hand back heap memory that is already touched (after large frees
    // glibc raises its mmap threshold), and advice on touched pages changes nothing until khugepaged comes by.
    // Map 2 MiB more than needed, keep the 2 MiB-aligned part, unmap the rest.
    const size_t len = (nbytes + 4095) / 4096 * 4096;
    void* raw = mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(raw != MAP_FAILED, "cpu_hugepage_copy: mmap of ", len + kHugePage, " bytes failed (out of memory?)");
    const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
    if (aligned > start) munmap(raw, aligned - start);
    const uintptr_t end = start + len + kHugePage;
    if (end > aligned + len) munmap(reinterpret_cast<void*>(aligned + len), end - (aligned + len));
    void* p = reinterpret_cast<void*>(aligned);
    // Only whole 2 MiB pages can be huge; a refusal (THP off) leaves ordinary pages, which is still correct.
    (void)madvise(p, len / kHugePage * kHugePage, MADV_HUGEPAGE);
    std::memcpy(p, src.data_ptr(), nbytes);
    return at::from_blob(p, src.sizes(), src.strides(), [len](void* q) { munmap(q, len); }, src.options());
  }
#endif
  return src.clone();
}

}  // namespace

TORCH_LIBRARY_IMPL(slimformer, CPU, m) { m.impl("cpu_hugepage_copy", &cpu_hugepage_copy); }

}  // namespace slimformer
