"""The `Predictions` container (`auditflow/core/predictions.py`): a save/load round trip and
each message a damaged or stale file fails with."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from auditflow.core.errors import DataError
from auditflow.core.predictions import SCHEMA_VERSION, AuditPoints, CanaryScores, Predictions

K = 3


def _full() -> Predictions:
    rng = np.random.default_rng(0)

    def logits(*shape: int) -> np.ndarray:
        return rng.normal(size=shape).astype(np.float32)

    labels = np.arange(20, dtype=np.int64) % K
    audit = AuditPoints(
        member_index=np.arange(6, dtype=np.int64),
        member_labels=labels[:6],
        member_logits=logits(6, K),
        nonmember_index=np.arange(5, dtype=np.int64),
        nonmember_wanted=np.array([2, 2, 1], np.int64),
        member_query_logits=logits(2, 6, K),
        nonmember_query_logits=logits(2, 5, K),
    )
    canaries = CanaryScores(np.array([3, 9], np.int64), np.array([True, False]), labels[[3, 9]], logits(2, K))
    return Predictions(logits(20, K), logits(20, K), labels, logits(8, K), labels[:8], audit, canaries)


def _save_raw(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_a_container_survives_a_round_trip(tmp_path: Path) -> None:
    saved = _full()
    loaded = Predictions.load(saved.save(tmp_path / "predictions.npz"))
    for f in fields(Predictions):
        if f.name not in ("audit", "canaries"):
            np.testing.assert_array_equal(getattr(loaded, f.name), getattr(saved, f.name))
    for f in fields(AuditPoints):
        np.testing.assert_array_equal(getattr(loaded.audit, f.name), getattr(saved.audit, f.name))
    assert loaded.canaries is not None and saved.canaries is not None
    for f in fields(CanaryScores):
        np.testing.assert_array_equal(getattr(loaded.canaries, f.name), getattr(saved.canaries, f.name))
    assert loaded.n_classes == K
    np.testing.assert_array_equal(loaded.nonmember_logits(), saved.test_logits_no_tta[:5])


def test_optional_parts_stay_absent(tmp_path: Path) -> None:
    full = _full()
    bare = replace(
        full, audit=replace(full.audit, member_query_logits=None, nonmember_query_logits=None), canaries=None
    )
    loaded = Predictions.load(bare.save(tmp_path / "p.npz"))
    assert loaded.canaries is None and loaded.audit.member_query_logits is None
    assert not any(k.startswith("canary_") or k.endswith("query_logits") for k in _arrays(tmp_path / "p.npz"))


def test_a_wrong_schema_version_is_named(tmp_path: Path) -> None:
    path = _full().save(tmp_path / "p.npz")
    arrays = _arrays(path) | {"schema_version": np.asarray(SCHEMA_VERSION + 1)}
    _save_raw(path, arrays)
    message = (
        f"predictions file {path} has schema version {SCHEMA_VERSION + 1}, this auditflow reads {SCHEMA_VERSION}; "
        "run the pipeline again to rebuild it"
    )
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        Predictions.load(path)
    del arrays["schema_version"]  # written before the container existed
    _save_raw(path, arrays)
    with pytest.raises(DataError, match=r"has schema version -1, this auditflow reads"):
        Predictions.load(path)


def test_a_missing_key_is_named(tmp_path: Path) -> None:
    path = _full().save(tmp_path / "p.npz")
    arrays = _arrays(path)
    del arrays["member_logits"], arrays["val_labels"]
    _save_raw(path, arrays)
    with pytest.raises(DataError, match=f"^{re.escape(f'predictions file {path} lacks val_labels, member_logits')}$"):
        Predictions.load(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("test_logits", np.zeros((19, K), np.float32), "test_logits has shape (19, 3), expected (20, 3)"),
        ("val_logits", np.zeros((8, K + 1), np.float32), "val_logits has shape (8, 4), expected (8, 3)"),
        ("canary_logits", np.zeros((3, K), np.float32), "canary_logits has shape (3, 3), expected (2, 3)"),
        ("member_index", np.arange(5, dtype=np.int64), "5 member indices for 6 labels"),
        ("nonmember_index", np.array([0, 20], np.int64), "nonmember_index out of the test split's range 0..19"),
        ("nonmember_wanted", np.ones(2, np.int64), "nonmember_wanted has shape (2,), expected (3,)"),
        ("member_query_logits", np.zeros((2, 5, K), np.float32), "member_query_logits has shape (2, 5, 3), expected"),
    ],
)
def test_a_bad_shape_is_named(tmp_path: Path, key: str, value: np.ndarray, message: str) -> None:
    path = _full().save(tmp_path / "p.npz")
    _save_raw(path, _arrays(path) | {key: value})
    with pytest.raises(DataError, match=f"^{re.escape(f'{path}: {message}')}"):
        Predictions.load(path)


def test_query_views_come_in_pairs(tmp_path: Path) -> None:
    path = _full().save(tmp_path / "p.npz")
    arrays = _arrays(path)
    del arrays["nonmember_query_logits"]
    _save_raw(path, arrays)
    with pytest.raises(DataError, match="member and non-member query views must come together"):
        Predictions.load(path)


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    path.write_bytes(b"not an npz")
    with pytest.raises(DataError, match=f"^cannot read predictions file {re.escape(str(path))}"):
        Predictions.load(path)
