"""The anomaly model's feature vector: 16 float64 values in [0, 1], in a fixed order.

The proxy fills a :class:`StatementFeatures` per statement from the analysis it
already made (no second parse) and the session's recent history, then hands
``to_array()`` to the model. The order of :data:`FEATURE_NAMES` is part of the
persisted model's format (a saved model records it and refuses another layout).

Every feature is defined in [0, 1]:

=====================  =====================================================================
``novel_fingerprint``  1.0 if the fingerprint was never seen for this role+tenant in the
                       baseline, else 0.0
``novel_for_role``     1.0 if the fingerprint was never seen for the role at all
``kind_select``        statement kind is SELECT (the three kinds are one-hot)
``kind_write``         INSERT / UPDATE / DELETE / COPY
``kind_other``         anything else (DDL, SET, utility statements...)
``relations``          distinct relations touched, capped at 10, divided by 10
``catalog_probe``      reads pg_catalog / information_schema
``tautology``          a WHERE/ON holds an always-true comparison (``OR 1=1``, ``OR 'a'='a'``)
``union``              has UNION / INTERSECT / EXCEPT
``stacked``            several statements in one message
``comment``            the statement text has a comment
``time_function``      calls pg_sleep or a similar time-based function
``refused``            the proxy refused the statement
``error_burst``        errors among the session's last 20 statements / 20
``rate``               log1p(statements per second in the session over the last 10 s) / 10,
                       capped at 1
``rows_returned``      log1p(rows returned by the session's previous statement) / 20,
                       capped at 1
=====================  =====================================================================

The ``*_feature`` helpers below apply exactly these scalings, so that the code
filling the vector and the documentation cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

FEATURE_NAMES: tuple[str, ...] = (
    "novel_fingerprint",
    "novel_for_role",
    "kind_select",
    "kind_write",
    "kind_other",
    "relations",
    "catalog_probe",
    "tautology",
    "union",
    "stacked",
    "comment",
    "time_function",
    "refused",
    "error_burst",
    "rate",
    "rows_returned",
)
NUM_FEATURES: int = len(FEATURE_NAMES)
_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}

#: Statement kinds counted as writes (``kind_write``); SELECT is ``kind_select``,
#: anything else ``kind_other``.
WRITE_KINDS = frozenset({"insert", "update", "delete", "copy"})

ERROR_WINDOW = 20  # statements
RATE_WINDOW_SECONDS = 10.0


def index(name: str) -> int:
    """Position of feature ``name`` in the vector (KeyError for an unknown name)."""
    try:
        return _INDEX[name]
    except KeyError:
        raise KeyError(f"unknown anomaly feature {name!r}") from None


def relations_feature(count: int) -> float:
    """``relations``: distinct relations touched, capped at 10, divided by 10."""
    return min(max(count, 0), 10) / 10.0


def error_burst_feature(errors_in_last_20: int) -> float:
    """``error_burst``: errors among the session's last 20 statements, divided by 20."""
    return min(max(errors_in_last_20, 0), ERROR_WINDOW) / ERROR_WINDOW


def rate_feature(statements_per_second: float) -> float:
    """``rate``: log1p(statements/s over the last 10 s) / 10, capped at 1."""
    return min(math.log1p(max(statements_per_second, 0.0)) / 10.0, 1.0)


def rows_feature(rows: int) -> float:
    """``rows_returned``: log1p(rows of the previous statement) / 20, capped at 1."""
    return min(math.log1p(max(rows, 0)) / 20.0, 1.0)


def kind_features(kind: str) -> tuple[float, float, float]:
    """(``kind_select``, ``kind_write``, ``kind_other``) for a lower-case statement kind."""
    kind = kind.lower()
    if kind == "select":
        return 1.0, 0.0, 0.0
    if kind in WRITE_KINDS:
        return 0.0, 1.0, 0.0
    return 0.0, 0.0, 1.0


@dataclass(slots=True)
class StatementFeatures:
    """One statement's features, one field per entry of :data:`FEATURE_NAMES`."""

    novel_fingerprint: float = 0.0
    novel_for_role: float = 0.0
    kind_select: float = 0.0
    kind_write: float = 0.0
    kind_other: float = 0.0
    relations: float = 0.0
    catalog_probe: float = 0.0
    tautology: float = 0.0
    union: float = 0.0
    stacked: float = 0.0
    comment: float = 0.0
    time_function: float = 0.0
    refused: float = 0.0
    error_burst: float = 0.0
    rate: float = 0.0
    rows_returned: float = 0.0

    def to_array(self) -> np.ndarray:
        """The vector (float64, C-contiguous, shape ``(NUM_FEATURES,)``), values as given.

        The model reads every value clamped to [0, 1], NaN as 0.0 (a feature the
        caller could not compute counts as absent), so no cleaning is done here.
        """
        x = np.array(
            (
                self.novel_fingerprint, self.novel_for_role, self.kind_select, self.kind_write,
                self.kind_other, self.relations, self.catalog_probe, self.tautology, self.union,
                self.stacked, self.comment, self.time_function, self.refused, self.error_burst,
                self.rate, self.rows_returned,
            ),
            dtype=np.float64,
        )
        return x

    @classmethod
    def from_array(cls, x: np.ndarray) -> StatementFeatures:
        values = np.asarray(x, dtype=np.float64).reshape(-1)
        if values.shape != (NUM_FEATURES,):
            raise ValueError(f"expected {NUM_FEATURES} features, got shape {values.shape}")
        return cls(*(float(v) for v in values))


if tuple(f.name for f in fields(StatementFeatures)) != FEATURE_NAMES:  # pragma: no cover
    raise AssertionError("StatementFeatures fields and FEATURE_NAMES disagree")
