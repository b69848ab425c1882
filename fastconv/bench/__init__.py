"""fastconv's benchmark: every op against torch's own, in one process, interleaved.

``python -m fastconv.bench [--ops ...] [--device cpu|cuda] [--threads N] [--json FILE] [--quick]``

Each row times fastconv and torch on the same inputs with ``torch.utils.benchmark.Timer`` (which
synchronises CUDA), alternating which goes first over several rounds, and reports the median of the
rounds, the speedup (torch time / fastconv time) and the throughput from an explicit formula: GB/s
for memory-bound ops (minimal bytes moved: every input read once, every output written once) and
GFLOP/s for compute-bound ones. The machine's copy bandwidth is measured in the same run, so GB/s
can be set against it.
"""

from __future__ import annotations

from .runner import Case, measure_copy_bandwidth, run_cases  # noqa: F401
from .suites import SUITES  # noqa: F401
