"""Markdown rows for the README from a `python -m fastconv.bench --json` file.

    python scripts/results_table.py benchmarks/results/FILE.json [op-prefix ...]
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    path, prefixes = sys.argv[1], sys.argv[2:]
    with open(path) as f:
        data = json.load(f)
    for r in data["rows"]:
        if prefixes and not any(r["op"].startswith(p) for p in prefixes):
            continue
        if "fastconv_GFLOPs" in r:
            tput = f"{r['fastconv_GFLOPs']:.0f}"
            if r.get("fraction_of_peak"):
                tput += f" ({100 * r['fraction_of_peak']:.0f}%)"
        elif "fastconv_GBps" in r:
            tput = f"{r['fastconv_GBps']:.1f}"
        else:
            tput = ""
        label = f"{r.get('note', '')} {r['shape']}".strip()
        print(f"| {r['op']} | {label} | {r['fastconv_ms']:.2f} | {r['torch_ms']:.2f} | "
              f"**{r['speedup']:.2f}×** | {tput} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
