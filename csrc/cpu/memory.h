// Memory helpers for the CPU glue.
#pragma once

#include <ATen/ATen.h>

namespace fastconv::cpu {

// Large outputs are freshly mapped pages, and first-touch faults at 4 KiB a page can cost more than
// the kernel that writes them (about 20 ms for the 77 MB of a ResNet stem max-pool's output and
// indices on our 2-vCPU machine). This asks Linux to back the whole 2 MiB-aligned part of a new,
// not yet written tensor with transparent huge pages (where THP is in `madvise` mode), which is
// what torch itself does under THP_MEM_ALLOC_ENABLE=1. A hint only: no effect on other systems,
// on small tensors, or where the kernel declines. FASTCONV_HUGE_PAGES=0 turns it off.
void advise_huge_pages(const at::Tensor& fresh);

}  // namespace fastconv::cpu
