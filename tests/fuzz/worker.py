"""A fuzz worker: reads case specs (JSON lines) on stdin, writes one result line per case.

Builds its fixtures (a tiny checkpoint, single-file and sharded, and a small tokenizer) once,
then runs each case in a scratch folder and classifies the outcome (see ``tests/fuzz``).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import traceback

PREFIX = "@@FUZZ "


def main() -> None:
    limit = int(os.environ.get("NEOX_FUZZ_ADDRESS_SPACE", "0"))
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to stderr, not into the result stream

    from .surfaces import Fixtures, run_case

    logging.basicConfig(level=logging.CRITICAL)
    fixtures = Fixtures.build()
    out.write(PREFIX + json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        case = json.loads(line)
        try:
            result = run_case(case, fixtures)
        except MemoryError:
            result = {"outcome": "memory", "detail": "MemoryError in the harness"}
        except BaseException:  # noqa: BLE001 - a harness bug must show, not kill the run
            result = {"outcome": "raw", "detail": "harness: " + traceback.format_exc()[-500:]}
        out.write(PREFIX + json.dumps({**case, **result}, default=str) + "\n")
    fixtures.cleanup()


if __name__ == "__main__":
    main()
