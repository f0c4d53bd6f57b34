"""Half-Space Trees (Tan, Ting & Liu, "Fast Anomaly Detection for Streaming Data", IJCAI 2011),
compiled with numba, over the feature vectors of :mod:`proxy.anomaly.features`.

The algorithm
-------------
Each of ``n_trees`` trees is a complete binary tree of depth ``depth`` built
*before* any data is seen: for every feature ``q`` a tree draws ``s_q`` uniform
in [0, 1] and works on the range ``s_q -/+ 2 * max(s_q, 1 - s_q)`` (which covers
[0, 1] with random margins); every internal node picks a feature uniformly at
random and splits the node's current range of that feature at its middle
(``x_q < mid`` goes left). Nodes carry two mass counters: ``ref`` (the mass of
the last complete window) and ``latest`` (the window being filled).

``learn(x)`` adds 1 to ``latest`` on every node of x's root-to-leaf path in
every tree. After ``window`` learned vectors, ``latest`` becomes ``ref`` and is
reset to 0 (the paper's model update). Until the first window is complete
there is no reference and :meth:`HalfSpaceTrees.score` returns 0.0 (nothing
is flagged by a model that has seen nothing).

``score(x)`` walks each tree from the root until it reaches depth ``depth`` or a
node whose reference mass is at most ``size_limit = 0.1 * window`` (the paper's
terminal node) and reads the paper's mass score ``m_t = ref(node) * 2**k`` where
``k`` is the node's depth. In the paper a *low* summed mass means anomalous.

Normalization (what :meth:`HalfSpaceTrees.score` returns)
---------------------------------------------------------
``m_t`` lies in ``[0, M]`` with ``M = window * 2**depth`` (the whole window in a
leaf at full depth). Each tree's mass is mapped to an anomaly score in [0, 1]
on a log scale and the trees are averaged::

    score(x) = mean over trees t of ( 1 - log1p(m_t) / log1p(M) )

so a vector that lands in reference-empty nodes of every tree (a kind of
statement never seen in the reference window) scores exactly 1.0, and a vector
whose every tree leaf holds the whole window scores 0.0. The log scale is used
because masses span several orders of magnitude (``1 - m/M`` would put nearly
all traffic, frequent or not, above 0.95); averaging per-tree scores makes
each tree a vote, so a vector isolated by a third of the trees scores at
least 1/3. Per tree it is a monotone transform of the paper's mass.

Inputs are read clamped to [0, 1] and NaN as 0.0. The compiled functions run
without the GIL (``nogil=True``) but the model is not safe to learn from and
score on in two threads at once; the proxy uses one event loop.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from proxy.anomaly.features import FEATURE_NAMES, NUM_FEATURES

#: Terminal node when its reference mass is at most this fraction of the window (paper: 0.1).
SIZE_LIMIT_FRACTION = 0.1
STATE_VERSION = 1

# counters[] slots
_IN_WINDOW = 0  # vectors in the window being filled
_WINDOWS = 1  # complete windows so far (0: no reference yet)
_LEARNED = 2  # vectors learned in total
_N_COUNTERS = 3

_jit = numba.njit(cache=True, nogil=True)

if NUM_FEATURES > 62:  # pragma: no cover - _explain keeps the features of a path in an int64
    raise AssertionError("too many features for the path bit mask")


@_jit
def _value(x, q):
    """x[q] clamped to [0, 1], NaN as 0.0."""
    v = x[q]
    if v >= 0.0:
        if v <= 1.0:
            return v
        return 1.0
    return 0.0


@_jit
def _build_trees(draw_dims, centres, depth, split_dim, split_val):
    """Fill split_dim/split_val ([n_trees, 2**(depth+1)], 1-indexed heap; leaves get -1)."""
    n_trees = centres.shape[0]
    n_features = centres.shape[1]
    first_leaf = 1 << depth
    lo = np.empty(n_features)
    hi = np.empty(n_features)
    for t in range(n_trees):
        split_dim[t, 0] = -1
        split_val[t, 0] = 0.0
        for i in range(1, 2 * first_leaf):
            if i >= first_leaf:
                split_dim[t, i] = -1
                split_val[t, i] = 0.0
                continue
            for q in range(n_features):
                s = centres[t, q]
                half = 2.0 * max(s, 1.0 - s)
                lo[q] = s - half
                hi[q] = s + half
            d = 0
            while (i >> (d + 1)) > 0:
                d += 1
            # Narrow the ranges along the path from the root to node i.
            for level in range(d - 1, -1, -1):
                a = i >> (level + 1)
                qa = split_dim[t, a]
                if (i >> level) & 1:
                    lo[qa] = split_val[t, a]
                else:
                    hi[qa] = split_val[t, a]
            q = draw_dims[t, i]
            split_dim[t, i] = q
            split_val[t, i] = 0.5 * (lo[q] + hi[q])


@_jit
def _prepare(split_dim, ref_mass, depth, size_limit, inv_log_max, walk_dim, node_score):
    """Derive the scoring tables from the reference masses (after each window roll).

    walk_dim[t, i]: the split feature of node i, or -1 where a walk stops (the
    paper's terminal node: depth ``depth`` or reference mass <= size_limit).
    node_score[t, i]: 1 - log1p(ref_mass[t, i] * 2**k) / log1p(M) for node i at depth k.
    """
    n_trees = split_dim.shape[0]
    for t in range(n_trees):
        walk_dim[t, 0] = -1
        node_score[t, 0] = 0.0
        for k in range(depth + 1):
            scale = float(1 << k)
            for i in range(1 << k, 2 << k):
                r = ref_mass[t, i]
                node_score[t, i] = 1.0 - math.log1p(r * scale) * inv_log_max
                if k < depth and r > size_limit:
                    walk_dim[t, i] = split_dim[t, i]
                else:
                    walk_dim[t, i] = -1


@_jit
def _learn_one(split_dim, split_val, ref_mass, latest_mass, latest_sum, ref_mean, counters,
               depth, window, size_limit, inv_log_max, walk_dim, node_score, x):
    n_trees = split_dim.shape[0]
    for t in range(n_trees):
        node = 1
        for _ in range(depth):
            latest_mass[t, node] += 1
            go_left = _value(x, split_dim[t, node]) < split_val[t, node]
            node = 2 * node if go_left else 2 * node + 1
        latest_mass[t, node] += 1
    for q in range(latest_sum.shape[0]):
        latest_sum[q] += _value(x, q)
    counters[_IN_WINDOW] += 1
    counters[_LEARNED] += 1
    if counters[_IN_WINDOW] >= window:
        n = counters[_IN_WINDOW]
        ref_mass[:, :] = latest_mass
        latest_mass[:, :] = 0
        for q in range(latest_sum.shape[0]):
            ref_mean[q] = latest_sum[q] / n
            latest_sum[q] = 0.0
        counters[_IN_WINDOW] = 0
        counters[_WINDOWS] += 1
        _prepare(split_dim, ref_mass, depth, size_limit, inv_log_max, walk_dim, node_score)


@_jit
def _learn_many(split_dim, split_val, ref_mass, latest_mass, latest_sum, ref_mean, counters,
                depth, window, size_limit, inv_log_max, walk_dim, node_score, xs):
    for i in range(xs.shape[0]):
        _learn_one(split_dim, split_val, ref_mass, latest_mass, latest_sum, ref_mean, counters,
                   depth, window, size_limit, inv_log_max, walk_dim, node_score, xs[i])


@_jit
def _walk(walk_dim, split_val, t, x, replace_q, replace_v):
    """The terminal node of x in tree t, reading x[replace_q] as replace_v (-1: none)."""
    node = 1
    q = walk_dim[t, 1]
    while q >= 0:
        v = replace_v if q == replace_q else _value(x, q)
        node = 2 * node if v < split_val[t, node] else 2 * node + 1
        q = walk_dim[t, node]
    return node


@_jit
def _clamp01(s):
    if s < 0.0:
        return 0.0
    if s > 1.0:
        return 1.0
    return s


@_jit
def _score(walk_dim, split_val, node_score, x):
    """Normalized score of x: the mean over trees of node_score at x's terminal node."""
    n_trees = walk_dim.shape[0]
    total = 0.0
    for t in range(n_trees):
        total += node_score[t, _walk(walk_dim, split_val, t, x, -1, 0.0)]
    return _clamp01(total / n_trees)


@_jit
def _score_many(walk_dim, split_val, node_score, xs, out):
    for i in range(xs.shape[0]):
        out[i] = _score(walk_dim, split_val, node_score, xs[i])


@_jit
def _explain(walk_dim, split_val, node_score, ref_mean, x, out):
    """out[q] = score(x) - score(x with x[q] read as ref_mean[q]); returns score(x).

    Only the trees whose walk for x splits on q can change, so each tree is
    walked again once per distinct feature on its path, not once per feature.
    """
    n_trees = walk_dim.shape[0]
    n_features = out.shape[0]
    for q in range(n_features):
        out[q] = 0.0
    total = 0.0
    for t in range(n_trees):
        node = 1
        used = 0  # bit mask of the features split on along x's path
        q = walk_dim[t, 1]
        while q >= 0:
            used |= 1 << q
            node = 2 * node if _value(x, q) < split_val[t, node] else 2 * node + 1
            q = walk_dim[t, node]
        base = node_score[t, node]
        total += base
        for q in range(n_features):
            if (used >> q) & 1:
                alt = _walk(walk_dim, split_val, t, x, q, ref_mean[q])
                out[q] += base - node_score[t, alt]
    # Differences of the unclamped means; clamping only trims rounding at 0 and 1.
    for q in range(n_features):
        out[q] /= n_trees
    return _clamp01(total / n_trees)


def _check_shape(n_trees: int, depth: int, window: int) -> None:
    if n_trees < 1 or not 1 <= depth <= 20 or window < 1:
        raise ValueError("need n_trees >= 1, 1 <= depth <= 20 and window >= 1")


class HalfSpaceTrees:
    """Streaming Half-Space Trees over ``NUM_FEATURES`` features in [0, 1].

    ``score`` is in [0, 1], higher = more anomalous (see the module docstring
    for the exact normalization). All state lives in preallocated numpy arrays
    of shape ``[n_trees, 2**(depth+1)]`` (node ``i`` of a tree at index ``i``,
    root at 1, children ``2i`` and ``2i+1``, index 0 unused).
    """

    def __init__(self, n_trees: int = 25, depth: int = 10, window: int = 256, seed: int = 0):
        _check_shape(n_trees, depth, window)
        self.n_trees = int(n_trees)
        self.depth = int(depth)
        self.window = int(window)
        self.seed = int(seed)
        self.n_features = NUM_FEATURES
        n_nodes = 1 << (self.depth + 1)
        self.split_dim = np.empty((self.n_trees, n_nodes), dtype=np.int64)
        self.split_val = np.empty((self.n_trees, n_nodes), dtype=np.float64)
        self.ref_mass = np.zeros((self.n_trees, n_nodes), dtype=np.int64)
        self.latest_mass = np.zeros((self.n_trees, n_nodes), dtype=np.int64)
        self.latest_sum = np.zeros(self.n_features, dtype=np.float64)
        self.ref_mean = np.zeros(self.n_features, dtype=np.float64)
        self.counters = np.zeros(_N_COUNTERS, dtype=np.int64)
        rng = np.random.RandomState(self.seed)
        centres = rng.uniform(0.0, 1.0, size=(self.n_trees, self.n_features))
        draw_dims = rng.randint(0, self.n_features, size=(self.n_trees, n_nodes)).astype(np.int64)
        _build_trees(draw_dims, centres, self.depth, self.split_dim, self.split_val)
        self._derive()

    def _derive(self) -> None:
        self.size_limit = SIZE_LIMIT_FRACTION * self.window
        #: M, the largest mass score of one tree: the whole window in a leaf at full depth.
        self.max_mass = float(self.window) * float(1 << self.depth)
        self._inv_log_max = 1.0 / math.log1p(self.max_mass)
        shape = self.split_dim.shape
        self.walk_dim = np.empty(shape, dtype=np.int64)
        self.node_score = np.empty(shape, dtype=np.float64)
        _prepare(self.split_dim, self.ref_mass, self.depth, self.size_limit, self._inv_log_max,
                 self.walk_dim, self.node_score)

    # -- properties -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once a first window is complete (before that, every score is 0.0)."""
        return bool(self.counters[_WINDOWS] > 0)

    @property
    def n_learned(self) -> int:
        return int(self.counters[_LEARNED])

    @property
    def windows(self) -> int:
        """Complete windows learned (the reference is the last of them)."""
        return int(self.counters[_WINDOWS])

    @property
    def baseline_mean(self) -> np.ndarray:
        """Per-feature mean over the reference window (what ``explain`` substitutes)."""
        return self.ref_mean.copy()

    # -- learning and scoring -------------------------------------------------------------

    def _vector(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.shape != (self.n_features,):
            raise ValueError(f"expected a vector of {self.n_features} features, got {x.shape}")
        return x

    def learn(self, x: np.ndarray) -> None:
        """Add one vector to the latest window (and roll the window when it is full)."""
        _learn_one(self.split_dim, self.split_val, self.ref_mass, self.latest_mass,
                   self.latest_sum, self.ref_mean, self.counters, self.depth, self.window,
                   self.size_limit, self._inv_log_max, self.walk_dim, self.node_score,
                   self._vector(x))

    def learn_many(self, X: np.ndarray) -> None:
        """``learn`` each row of ``X`` (shape ``[n, NUM_FEATURES]``) in order."""
        xs = np.ascontiguousarray(X, dtype=np.float64)
        if xs.ndim != 2 or xs.shape[1] != self.n_features:
            raise ValueError(f"expected shape [n, {self.n_features}], got {xs.shape}")
        _learn_many(self.split_dim, self.split_val, self.ref_mass, self.latest_mass,
                    self.latest_sum, self.ref_mean, self.counters, self.depth, self.window,
                    self.size_limit, self._inv_log_max, self.walk_dim, self.node_score, xs)

    def score(self, x: np.ndarray) -> float:
        """Anomaly score in [0, 1] (higher = more anomalous); 0.0 before the first window."""
        if self.counters[_WINDOWS] == 0:
            return 0.0
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.shape != (self.n_features,):
            raise ValueError(f"expected a vector of {self.n_features} features, got {x.shape}")
        return _score(self.walk_dim, self.split_val, self.node_score, x)

    def score_many(self, X: np.ndarray) -> np.ndarray:
        """``score`` of each row of ``X`` (for offline evaluation and benchmarks)."""
        xs = np.ascontiguousarray(X, dtype=np.float64)
        if xs.ndim != 2 or xs.shape[1] != self.n_features:
            raise ValueError(f"expected shape [n, {self.n_features}], got {xs.shape}")
        out = np.zeros(xs.shape[0], dtype=np.float64)
        if self.ready:
            _score_many(self.walk_dim, self.split_val, self.node_score, xs, out)
        return out

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per feature: score(x) minus the score with that feature set to its baseline mean."""
        out = np.zeros(self.n_features, dtype=np.float64)
        if self.ready:
            _explain(self.walk_dim, self.split_val, self.node_score, self.ref_mean,
                     self._vector(x), out)
        return out

    def explain(self, x: np.ndarray, top: int = 3) -> list[tuple[str, float]]:
        """The ``top`` features that raise x's score most, as (name, score drop) pairs.

        A feature's contribution is how much the score drops when that feature
        alone is replaced by its mean over the reference window; only positive
        contributions are listed, largest first (an empty list when no single
        feature explains the score, or before the first window).
        """
        contrib = self.contributions(x)
        order = np.argsort(-contrib, kind="stable")
        result: list[tuple[str, float]] = []
        for q in order[:max(top, 0)]:
            value = float(contrib[q])
            if value <= 0.0:
                break
            result.append((FEATURE_NAMES[q], value))
        return result

    # -- persistence ----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the model, JSON-serializable (arrays as lists)."""
        return {
            "version": STATE_VERSION,
            "algorithm": "half-space-trees",
            "feature_names": list(FEATURE_NAMES),
            "n_trees": self.n_trees,
            "depth": self.depth,
            "window": self.window,
            "seed": self.seed,
            "size_limit_fraction": SIZE_LIMIT_FRACTION,
            "split_dim": self.split_dim.tolist(),
            "split_val": self.split_val.tolist(),
            "ref_mass": self.ref_mass.tolist(),
            "latest_mass": self.latest_mass.tolist(),
            "latest_sum": self.latest_sum.tolist(),
            "ref_mean": self.ref_mean.tolist(),
            "counters": self.counters.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> HalfSpaceTrees:
        """Rebuild a model saved by :meth:`state` (ValueError if it does not fit)."""
        if state.get("version") != STATE_VERSION or state.get("algorithm") != "half-space-trees":
            raise ValueError("not a half-space-trees model state of a known version")
        if tuple(state.get("feature_names", ())) != FEATURE_NAMES:
            raise ValueError("the saved model uses another feature layout; learn a new baseline")
        if state.get("size_limit_fraction") != SIZE_LIMIT_FRACTION:
            raise ValueError("the saved model uses another size limit")
        model = cls.__new__(cls)
        model.n_trees = int(state["n_trees"])
        model.depth = int(state["depth"])
        model.window = int(state["window"])
        model.seed = int(state["seed"])
        model.n_features = NUM_FEATURES
        _check_shape(model.n_trees, model.depth, model.window)
        shape = (model.n_trees, 1 << (model.depth + 1))
        arrays = {
            "split_dim": (np.int64, shape),
            "split_val": (np.float64, shape),
            "ref_mass": (np.int64, shape),
            "latest_mass": (np.int64, shape),
            "latest_sum": (np.float64, (NUM_FEATURES,)),
            "ref_mean": (np.float64, (NUM_FEATURES,)),
            "counters": (np.int64, (_N_COUNTERS,)),
        }
        for name, (dtype, expected) in arrays.items():
            value = np.ascontiguousarray(np.array(state[name], dtype=dtype))
            if value.shape != expected:
                raise ValueError(f"model state {name!r} has shape {value.shape}, not {expected}")
            setattr(model, name, value)
        internal = model.split_dim[:, 1:1 << model.depth]
        if internal.min() < 0 or internal.max() >= NUM_FEATURES:
            raise ValueError("model state has split features out of range")
        model._derive()
        return model
