"""`make bench`: every benchmark, one after the other, each printing its own
ratios against reference tools measured in the same run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["bench_hub.py", "--store", "file"],
    ["bench_hub.py", "--store", "rbd"],
    ["bench_hub.py", "--store", "rbd", "--size-mib", "4096"],
    ["bench_rbd_write.py"],
    ["bench_transfer_http.py"],
    ["bench_agents.py"],
    ["bench_wan.py"],
    ["bench_update.py"],
    ["bench_lab_sites.py", "--edges", "200", "--agents-per-process", "25"],
    ["bench_adopt.py"],
]


def main() -> int:
    failed = 0
    for bench in BENCHES:
        print(f"\n=== {' '.join(bench)}", flush=True)
        failed += subprocess.run([sys.executable, str(HERE / bench[0]), *bench[1:]]).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
