"""Runs fuzz cases in worker subprocesses under time and address-space limits; counts outcomes."""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .surfaces import SURFACES

OUTCOMES = ("clean", "correct", "raw", "silent", "hang", "crash", "memory")
GOOD = ("clean", "correct")
ROOT = Path(__file__).resolve().parents[2]
PREFIX = "@@FUZZ "


@dataclass
class Report:
    seed: int
    results: list[dict] = field(default_factory=list)

    def counts(self) -> Counter:
        return Counter(r["outcome"] for r in self.results)

    def by_surface(self) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for r in self.results:
            out.setdefault(r["surface"], Counter())[r["outcome"]] += 1
        return out

    def failures(self) -> list[dict]:
        return [r for r in self.results if r["outcome"] not in GOOD]

    def summary(self) -> str:
        lines = [f"seed {self.seed}: {len(self.results)} cases: "
                 + ", ".join(f"{o} {self.counts()[o]}" for o in OUTCOMES)]
        for surface, counts in sorted(self.by_surface().items()):
            lines.append(f"  {surface:<12} " + ", ".join(f"{o} {counts[o]}" for o in OUTCOMES if counts[o]))
        for r in self.failures()[:40]:
            lines.append(f"  FAIL case {r['case']} ({r['surface']}: {r.get('what', '')}): {r['outcome']}: "
                         f"{r.get('detail', '')[:300]}")
        return "\n".join(lines)


class _Worker:
    def __init__(self, address_space: int, startup_timeout: float) -> None:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               "NEOX_FUZZ_ADDRESS_SPACE": str(address_space)}
        # The worker sets its own RLIMIT_AS first thing (preexec_fn is unsafe with threads here).
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.worker"], cwd=ROOT, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )
        line = self._read(startup_timeout)
        if line is None or line.get("ready") is not True:
            self.kill()
            raise RuntimeError(f"fuzz worker did not start: {line}")

    def _read(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                return None
            line = self.proc.stdout.readline()
            if not line:
                return {"eof": True}
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX):])

    def run(self, case: dict, timeout: float) -> dict:
        try:
            self.proc.stdin.write(json.dumps(case) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died(case)
        result = self._read(timeout)
        if result is None:
            self.kill()
            return {**case, "outcome": "hang", "detail": f"no result within {timeout:.0f} s"}
        if result.get("eof"):
            return self._died(case)
        return result

    def _died(self, case: dict) -> dict:
        code = self.proc.wait()
        if code == -signal.SIGKILL:  # the kernel's OOM killer, or RLIMIT_AS in native code
            return {**case, "outcome": "memory", "detail": "worker killed (SIGKILL)"}
        return {**case, "outcome": "crash", "detail": f"worker exited with {code}"}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except Exception:
                self.kill()


def run(
    cases: int,
    seed: int,
    workers: int = 2,
    timeout: float = 60.0,
    address_space: int = 4 * 2**30,
    only: list[int] | None = None,
    progress: bool = False,
    surfaces: tuple[str, ...] = SURFACES,
) -> Report:
    """Run cases 0..cases-1 of ``seed`` (or only the listed ones); round-robin over the surfaces."""
    ids = only if only is not None else list(range(cases))
    todo: queue.Queue = queue.Queue()
    for i in ids:
        todo.put({"seed": seed, "case": i, "surface": surfaces[i % len(surfaces)]})
    report = Report(seed)
    lock = threading.Lock()

    def loop() -> None:
        worker = None
        try:
            while True:
                try:
                    case = todo.get_nowait()
                except queue.Empty:
                    return
                if worker is None or not worker.alive():
                    worker = _Worker(address_space, startup_timeout=max(300.0, timeout))
                result = worker.run(case, timeout)
                with lock:
                    report.results.append(result)
                    if progress and len(report.results) % 25 == 0:
                        print(f"  {len(report.results)}/{len(ids)} cases: {dict(report.counts())}", file=sys.stderr,
                              flush=True)
        finally:
            if worker is not None:
                worker.close()

    threads = [threading.Thread(target=loop) for _ in range(max(1, min(workers, len(ids))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.results.sort(key=lambda r: r["case"])
    return report
