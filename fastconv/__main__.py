"""``python -m fastconv``: the main job (see :mod:`fastconv.demo`); ``python -m fastconv bench``: the
benchmark of every op against torch, written as JSON and as a PNG bar chart of speedups;
``python -m fastconv check``: every op against torch for correctness on this machine (:mod:`fastconv.check`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench.__main__ import main as bench_main

        return bench_main(argv[1:], default_outputs=True)
    if argv[:1] == ["check"]:
        from .check import main as check_main

        return check_main(argv[1:])
    from .demo import main as demo_main

    return demo_main(argv)


if __name__ == "__main__":
    sys.exit(main())
