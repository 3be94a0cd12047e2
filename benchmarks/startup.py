"""How long `dccnext` takes to answer --help, --version and COMMAND --help, and what each imports.

    python -m benchmarks.startup [--repeats 5]

Each case runs in a fresh interpreter (`python -m dccnext_cli ...`); the table gives the median wall time and
whether torch or timm was imported (read from `python -X importtime`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [["--help"], ["--version"], ["train", "--help"], ["flops", "--help"], ["export", "--help"]]


def _run(args: list[str], importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *flags, "-m", "dccnext_cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    print(f"{'dccnext ...':<18} {'median s':>9} {'min s':>7}  heavy imports")
    for args in CASES:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _run(args)
            times.append(time.perf_counter() - start)
        log = _run(args, importtime=True).stderr.splitlines()
        heavy = sorted({line.rpartition("|")[2].strip().split(".")[0] for line in log if "|" in line}
                       & {"torch", "timm", "torchvision", "matplotlib"})
        print(f"{' '.join(args):<18} {statistics.median(times):>9.2f} {min(times):>7.2f}  {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
