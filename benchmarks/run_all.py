"""`make bench`: run every benchmark script in this folder, one after another, each printing its own tables.

A benchmark is a ``*.py`` file here with a ``main()``; the order below puts the cheap ones first.  Pass
benchmark names to run only those: ``.venv/bin/python benchmarks/run_all.py network_size``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIRST = ["network_size", "network_speed"]


def main(names) -> int:
    scripts = sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("run_all", "__init__") and not p.stem.startswith("_"))
    order = [n for n in FIRST if n in scripts] + [n for n in scripts if n not in FIRST]
    failed = []
    for name in names or order:
        print(f"\n===== benchmarks/{name}.py =====", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / f"{name}.py")], cwd=HERE)
        print(f"----- {name}: exit {rc}, {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
