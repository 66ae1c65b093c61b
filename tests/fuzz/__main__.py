"""python3 -m tests.fuzz --cases N --seed S [--workers W] [--timeout T] [--only I ...] [--json PATH]"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .harness import GOOD, run
from .surfaces import SURFACES


def main() -> int:
    parser = argparse.ArgumentParser(description="neox fuzz suite (see tests/fuzz/__init__.py)")
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument("--address-space", type=int, default=4 * 2**30, help="RLIMIT_AS of each worker, bytes")
    parser.add_argument("--only", type=int, nargs="*", help="run only these case numbers")
    parser.add_argument("--json", help="write every case's result to this file")
    parser.add_argument("--surfaces", default=",".join(SURFACES), help=f"comma-separated, of {','.join(SURFACES)}")
    args = parser.parse_args()
    start = time.monotonic()
    surfaces = tuple(args.surfaces.split(","))
    unknown = set(surfaces) - set(SURFACES)
    if unknown:
        parser.error(f"unknown surfaces {sorted(unknown)}; choose from {SURFACES}")
    report = run(args.cases, args.seed, args.workers, args.timeout, args.address_space, args.only, progress=True,
                 surfaces=surfaces)
    print(report.summary())
    print(f"{time.monotonic() - start:.0f} s")
    if args.only:
        for r in report.results:
            print(json.dumps(r, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.results, f, indent=1)
    return 0 if all(r["outcome"] in GOOD for r in report.results) else 1


if __name__ == "__main__":
    sys.exit(main())
