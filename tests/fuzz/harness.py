#!/usr/bin/env python3
"""Run one fuzz target under atheris (libFuzzer): coverage-guided, in this process.

    python -m tests.fuzz.harness TARGET [libFuzzer flags] [CORPUS_DIR ...]

TARGET is one of ``targets.TARGET_NAMES`` (or comes from ``FUZZ_TARGET``); the
flags and corpus directories go to libFuzzer as they are (``-runs=N``,
``-max_total_time=S``, ``-max_len=N``, ``-timeout=S``, ``-dict=FILE``,
``-artifact_prefix=DIR/``, ``-minimize_crash=1``, ...). The proxy's modules are
instrumented for coverage (``proxy.anomaly`` excepted: numba compiles its
functions from their bytecode); ``FUZZ_INSTRUMENT=sqlglot,...`` adds more
packages. Relay inputs are split with ``atheris.FuzzedDataProvider``.

atheris ends the process itself: exit 0 when the run finished, non-zero
after a crash (an uncaught exception: the input is written as ``crash-<sha1>``
under the artifact prefix) or a timeout. libFuzzer modes that run this file
again (``-minimize_crash``, ``-fork``) find the target in ``FUZZ_TARGET``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    import atheris

    args = sys.argv[1:]
    if args and not args[0].startswith("-") and not os.path.exists(args[0]):
        os.environ["FUZZ_TARGET"] = args.pop(0)  # inherited by libFuzzer's re-runs
    name = os.environ.get("FUZZ_TARGET")
    if not name:
        sys.exit(__doc__)
    repo = str(Path(__file__).resolve().parents[2])
    if repo not in sys.path:
        sys.path.insert(0, repo)
    extra = [m for m in os.environ.get("FUZZ_INSTRUMENT", "").split(",") if m]
    with atheris.instrument_imports(include=["proxy", *extra], exclude=["proxy.anomaly"]):
        from tests.fuzz import targets
    if name not in targets.TARGET_NAMES:
        sys.exit(f"unknown target {name!r}; choose from {', '.join(targets.TARGET_NAMES)}")
    split = targets.split_fdp if name in targets.SPLIT_TARGETS else targets.split_plain
    atheris.Setup([sys.argv[0], *args], targets.fuzz_target(name, split))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
