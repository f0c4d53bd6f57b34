"""Per-role and per-(role, tenant) sets of seen statement fingerprints, persisted with the model.

The ``novel_fingerprint`` and ``novel_for_role`` features come from here:
:meth:`Baseline.seen` says whether a fingerprint was seen for this role and
tenant, and for the role under any tenant. ``learn`` mode adds what it sees.

Memory is bounded: at most ``max_fingerprints`` (10,000) fingerprints per
role+tenant, ``max_tenants`` (1,000) tenants per role and ``max_role_fingerprints``
(100,000) fingerprints in a role's own set. Past a cap nothing more is added
and :attr:`Baseline.dropped` counts what was not (a capped fingerprint keeps
reading as novel, which errs on the side of scoring it).

One JSON file holds the fingerprints and the model (written atomically: a
temporary file in the same directory, fsync, then ``os.replace``)::

    {"version": 1,
     "fingerprints": {"<role>": {"role": [fp, ...], "tenants": {"<tenant>": [fp, ...]}}},
     "dropped": {"fingerprints": n, "tenants": n, "role_fingerprints": n},
     "model": <HalfSpaceTrees.state()> or null}

A statement without a tenant is filed under the tenant ``""``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from proxy.anomaly.model import HalfSpaceTrees

FILE_VERSION = 1


class Baseline:
    def __init__(self, model: HalfSpaceTrees | None = None, *, max_fingerprints: int = 10_000,
                 max_tenants: int = 1_000, max_role_fingerprints: int = 100_000):
        #: The model saved and loaded with the fingerprints (None: fingerprints only).
        self.model = model
        self.max_fingerprints = max_fingerprints
        self.max_tenants = max_tenants
        self.max_role_fingerprints = max_role_fingerprints
        self._tenants: dict[str, dict[str, set[str]]] = {}
        self._roles: dict[str, set[str]] = {}
        #: What the caps kept out: fingerprints of a full role+tenant, new tenants of a
        #: full role, fingerprints of a full role set.
        self.dropped: dict[str, int] = {"fingerprints": 0, "tenants": 0, "role_fingerprints": 0}

    def seen(self, role: str, tenant: str | None, fp: str) -> tuple[bool, bool]:
        """(seen for this role and tenant, seen for this role under any tenant)."""
        role_set = self._roles.get(role)
        if role_set is None:
            return False, False
        tenant_set = self._tenants[role].get(tenant or "")
        return (tenant_set is not None and fp in tenant_set), fp in role_set

    def add(self, role: str, tenant: str | None, fp: str) -> bool:
        """Record fp for role and tenant; False when a cap kept it (or part of it) out."""
        tenant = tenant or ""
        tenants = self._tenants.get(role)
        if tenants is None:
            tenants = self._tenants[role] = {}
            self._roles[role] = set()
        kept = True
        tenant_set = tenants.get(tenant)
        if tenant_set is None:
            if len(tenants) >= self.max_tenants:
                self.dropped["tenants"] += 1
                tenant_set = None
                kept = False
            else:
                tenant_set = tenants[tenant] = set()
        if tenant_set is not None and fp not in tenant_set:
            if len(tenant_set) >= self.max_fingerprints:
                self.dropped["fingerprints"] += 1
                kept = False
            else:
                tenant_set.add(fp)
        role_set = self._roles[role]
        if fp not in role_set:
            if len(role_set) >= self.max_role_fingerprints:
                self.dropped["role_fingerprints"] += 1
                kept = False
            else:
                role_set.add(fp)
        return kept

    def roles(self) -> list[str]:
        return sorted(self._roles)

    def tenants(self, role: str) -> list[str]:
        return sorted(self._tenants.get(role, {}))

    def fingerprint_count(self, role: str, tenant: str | None = None) -> int:
        """Fingerprints of role+tenant, or of the role's own set when tenant is None."""
        if tenant is None:
            return len(self._roles.get(role, ()))
        return len(self._tenants.get(role, {}).get(tenant, ()))

    # -- persistence ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": FILE_VERSION,
            "fingerprints": {
                role: {
                    "role": sorted(self._roles[role]),
                    "tenants": {t: sorted(fps) for t, fps in sorted(tenants.items())},
                }
                for role, tenants in sorted(self._tenants.items())
            },
            "dropped": dict(self.dropped),
            "caps": {
                "max_fingerprints": self.max_fingerprints,
                "max_tenants": self.max_tenants,
                "max_role_fingerprints": self.max_role_fingerprints,
            },
            "model": None if self.model is None else self.model.state(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline:
        if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
            raise ValueError("not an anomaly baseline of a known version")
        model_state = data.get("model")
        model = None if model_state is None else HalfSpaceTrees.from_state(model_state)
        caps = data.get("caps", {})
        baseline = cls(model, **{k: int(v) for k, v in caps.items()
                                 if k in ("max_fingerprints", "max_tenants",
                                          "max_role_fingerprints")})
        for role, entry in data.get("fingerprints", {}).items():
            baseline._roles[role] = set(entry.get("role", ()))
            baseline._tenants[role] = {t: set(fps) for t, fps in entry.get("tenants", {}).items()}
        for key, value in data.get("dropped", {}).items():
            if key in baseline.dropped:
                baseline.dropped[key] = int(value)
        return baseline

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write fingerprints and model to path atomically (temp file + os.replace)."""
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Baseline:
        """Read a file written by :meth:`save` (ValueError if it is not one)."""
        return cls.from_dict(read_json(path))


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_write_json(target: Path, data: Any) -> None:
    """Write data as JSON to target via a temp file in the same directory and os.replace,
    creating the directory if needed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
