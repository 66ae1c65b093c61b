"""A seeded fuzz suite over every surface where users hand neox something malformed.

    python3 -m tests.fuzz --cases 400 --seed 1          # the long mode
    python3 -m tests.fuzz --seed 1 --only 17            # rerun one case (prints its outcome)

Surfaces (``surfaces.py``): config.json; safetensors headers and bytes; shard indexes; tokenizer
files (tokenizer.json, tokenizer_config.json, special_tokens_map.json); forward() arguments;
saves under injected faults (SIGKILL before/after a file operation of the save, a file-size
limit at a random byte budget, a read-only target). Each case is drawn from
``random.Random(f"{seed}:{case}")`` alone, so a seed and a case number reproduce it.

Cases run in worker subprocesses (``worker.py``), each under an address-space limit
(RLIMIT_AS) and a per-case time limit; a worker handles many cases so that torch is imported
once per worker, not once per case. Outcomes:

* ``clean``   an error of a documented type (ValueError, TypeError, OSError) naming the file,
  field, tensor or argument;
* ``correct`` the call succeeded and the result checks out (weights equal what the file holds,
  a forward pass gives finite logits of the right shape, a folder loads entirely old or new);
* ``raw``     any other exception, or a documented type whose message names nothing;
* ``silent``  the call succeeded where it must have failed, or gave a wrong result;
* ``hang``    over the time limit; ``crash`` the worker died of a signal; ``memory`` the
  address-space limit was hit.

The suite fails on anything but ``clean`` and ``correct``.
"""

from __future__ import annotations

from .harness import OUTCOMES, Report, run

__all__ = ["OUTCOMES", "Report", "run"]
