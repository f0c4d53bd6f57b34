"""Compile (cold numba cache) or load (warm cache) every jitted function of the model once.

The proxy calls :func:`warm_up` at start so that the first statement is not the
one that pays for compilation. numba's ``cache=True`` keeps the machine code in
``__pycache__`` next to :mod:`proxy.anomaly.model`, or under ``NUMBA_CACHE_DIR``
when that is set (set it to a writable directory when the package directory is
read-only, and keep it across restarts to start warm). Run as a script to print
the time: ``python -m proxy.anomaly.warmup``.
"""

from __future__ import annotations

import time

import numpy as np


def warm_up() -> float:
    """Run every jitted function once on dummy data; return the seconds it took.

    The dummy model has the same argument types as a real one, so numba has
    nothing left to compile afterwards. Importing numba itself is not counted
    when it was already imported.
    """
    start = time.perf_counter()
    from proxy.anomaly.features import NUM_FEATURES
    from proxy.anomaly.model import HalfSpaceTrees

    model = HalfSpaceTrees(n_trees=2, depth=3, window=4, seed=0)  # _build_trees, _prepare
    rng = np.random.RandomState(0)
    xs = rng.uniform(0.0, 1.0, size=(8, NUM_FEATURES))
    model.learn_many(xs)  # _learn_many (and _learn_one, _prepare inside)
    model.learn(xs[0])  # _learn_one
    model.score(xs[0])  # _score, _walk
    model.score_many(xs)  # _score_many
    model.explain(xs[0])  # _explain
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"{warm_up():.3f} s")
