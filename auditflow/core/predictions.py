"""The evaluate stage's output and the audits' one input: `Predictions`, a typed, versioned
container of logits, labels and the privacy audit's points, saved as one `.npz` file.

Logits are computed once per split (by `evaluate`) and read by the fairness and privacy audits.
The file's keys and shapes are checked on load against `SCHEMA_VERSION`'s layout, so a file
written by another version, or cut short, fails with a message that names the key and the
shape found instead of surfacing as a `KeyError` inside an audit.

Shapes: `n_*` images, `K` classes, `Q` query views of each audited image (view 0 the plain image).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from auditflow.core.errors import DataError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class AuditPoints:
    """The membership audit's points, scored by the model as it ships (no TTA).

    Members are training images; non-members a seeded sample of the test split with the same
    class counts (classes with too few training images are matched down: `nonmember_wanted`
    holds the per-class counts drawn before that)."""

    member_index: np.ndarray  # (n_m,) int64, into the training split
    member_labels: np.ndarray  # (n_m,) int64
    member_logits: np.ndarray  # (n_m, K) float32
    nonmember_index: np.ndarray  # (n_n,) int64, into the test split
    nonmember_wanted: np.ndarray  # (K,) int64: non-members drawn per class before matching down
    member_query_logits: np.ndarray | None = None  # (Q, n_m, K) when privacy.queries > 1
    nonmember_query_logits: np.ndarray | None = None  # (Q, n_n, K) when privacy.queries > 1


@dataclass(frozen=True)
class CanaryScores:
    """The one-run audit's canaries (`audits/canaries.py`), scored apart from the audit points."""

    index: np.ndarray  # (m,) int64, into the training split
    included: np.ndarray  # (m,) bool: trained on
    labels: np.ndarray  # (m,) int64
    logits: np.ndarray  # (m, K) float32


@dataclass(frozen=True)
class Predictions:
    """Logits of every split the audits read, and the audited points."""

    test_logits: np.ndarray  # (n_test, K): as configured (with TTA when the profile uses it)
    test_logits_no_tta: np.ndarray  # (n_test, K): the shipped model's
    test_labels: np.ndarray  # (n_test,) int64
    val_logits: np.ndarray  # (n_val, K), no TTA
    val_labels: np.ndarray  # (n_val,) int64
    audit: AuditPoints
    canaries: CanaryScores | None = None

    @property
    def n_classes(self) -> int:
        return int(self.test_logits.shape[1])

    def nonmember_logits(self) -> np.ndarray:
        """(n_n, K): the shipped model's logits of the audited non-members."""
        return self.test_logits_no_tta[self.audit.nonmember_index]

    def nonmember_labels(self) -> np.ndarray:
        return self.test_labels[self.audit.nonmember_index]

    def save(self, path: str | Path) -> Path:
        """Write the container to `path` (`.npz`, compressed); the path."""
        arrays: dict[str, np.ndarray] = {"schema_version": np.asarray(SCHEMA_VERSION)}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                arrays[f.name] = value
        for f in fields(AuditPoints):
            value = getattr(self.audit, f.name)
            if value is not None:
                arrays[f.name] = value
        if self.canaries is not None:
            arrays |= {f"canary_{f.name}": getattr(self.canaries, f.name) for f in fields(CanaryScores)}
        np.savez_compressed(path, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        """Read and validate a container written by `save`; `DataError` naming what is wrong."""
        try:
            with np.load(path) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read predictions file {path}: {err}") from err
        version = int(arrays.pop("schema_version", -1))
        if version != SCHEMA_VERSION:
            raise DataError(
                f"predictions file {path} has schema version {version}, this auditflow reads {SCHEMA_VERSION}; "
                "run the pipeline again to rebuild it"
            )
        missing = [k for k in _REQUIRED if k not in arrays]
        if missing:
            raise DataError(f"predictions file {path} lacks {', '.join(missing)}")
        audit = AuditPoints(**{f.name: arrays.get(f.name) for f in fields(AuditPoints)})
        canaries = None
        if "canary_index" in arrays:
            canaries = CanaryScores(**{f.name: arrays[f"canary_{f.name}"] for f in fields(CanaryScores)})
        found = cls(**{k: arrays[k] for k in _SPLITS}, audit=audit, canaries=canaries)
        found.validate(str(path))
        return found

    def validate(self, where: str = "predictions") -> None:
        """Shapes agree (one class count, logits beside their labels, indices in range)."""
        k = self.n_classes
        pairs = (
            ("test_logits", self.test_logits, self.test_labels),
            ("test_logits_no_tta", self.test_logits_no_tta, self.test_labels),
            ("val_logits", self.val_logits, self.val_labels),
            ("member_logits", self.audit.member_logits, self.audit.member_labels),
        )
        if self.canaries is not None:
            pairs += (("canary_logits", self.canaries.logits, self.canaries.labels),)
        for name, logits, labels in pairs:
            if logits.ndim != 2 or logits.shape != (len(labels), k):
                raise DataError(f"{where}: {name} has shape {logits.shape}, expected ({len(labels)}, {k})")
        if len(self.audit.member_index) != len(self.audit.member_labels):
            raise DataError(
                f"{where}: {len(self.audit.member_index)} member indices for {len(self.audit.member_labels)} labels"
            )
        index = self.audit.nonmember_index
        if len(index) and (index.min() < 0 or index.max() >= len(self.test_labels)):
            raise DataError(f"{where}: nonmember_index out of the test split's range 0..{len(self.test_labels) - 1}")
        if self.audit.nonmember_wanted.shape != (k,):
            raise DataError(f"{where}: nonmember_wanted has shape {self.audit.nonmember_wanted.shape}, expected ({k},)")
        views = (self.audit.member_query_logits, self.audit.nonmember_query_logits)
        if (views[0] is None) != (views[1] is None):
            raise DataError(f"{where}: member and non-member query views must come together")
        if views[0] is not None:
            n = (len(self.audit.member_index), len(index))
            for side, view, count in zip(("member", "nonmember"), views, n, strict=True):
                if view.ndim != 3 or view.shape[1:] != (count, k) or view.shape[0] != views[0].shape[0]:
                    raise DataError(f"{where}: {side}_query_logits has shape {view.shape}, expected (Q, {count}, {k})")


_SPLITS = ("test_logits", "test_logits_no_tta", "test_labels", "val_logits", "val_labels")
_REQUIRED = (*_SPLITS, "member_index", "member_labels", "member_logits", "nonmember_index", "nonmember_wanted")
