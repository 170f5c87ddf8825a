"""Faults and hostile input at the data layer: each ends with an error naming the problem,
or is repaired, and never with a traceback or a silently wrong model."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from auditflow.core.config import DataConfig
from auditflow.core.data import ingest, verify_snapshot
from auditflow.core.errors import DataError


def test_a_snapshot_with_altered_pixels_is_rebuilt_not_reused(image_folder: Path, tmp_path: Path, caplog) -> None:
    first = ingest(str(image_folder), DataConfig(), tmp_path)
    images = np.load(first.path / "train_images.npy", mmap_mode="r+")
    images[:] = 0  # pixels zeroed, .npy header kept
    images.flush()
    del images
    assert "hash to" in verify_snapshot(first)
    again = ingest(str(image_folder), DataConfig(), tmp_path)
    assert f"snapshot {first.path} is damaged (its arrays hash to" in caplog.text
    assert again.digest == first.digest and verify_snapshot(again) is None
    assert np.load(again.path / "train_images.npy").any()


def test_a_truncated_snapshot_array_is_rebuilt(image_folder: Path, tmp_path: Path, caplog) -> None:
    first = ingest(str(image_folder), DataConfig(), tmp_path)
    npy = first.path / "test_images.npy"
    npy.write_bytes(npy.read_bytes()[:1000])
    again = ingest(str(image_folder), DataConfig(), tmp_path)
    assert "is damaged (ValueError" in caplog.text
    assert verify_snapshot(again) is None


def test_a_decompression_bomb_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_image_folder(tmp_path / "data", n_train=2, n_test=1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32x32 = 1024 px > 2x the limit: a "bomb"
    with pytest.raises(
        DataError, match=r"cannot decode image train/circle/0000\.png: Image size \(1024 pixels\) exceeds limit"
    ):
        ingest(str(root), DataConfig(), tmp_path / "cache")


def test_a_huge_non_image_member_is_never_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_image_folder(tmp_path / "data", n_train=2, n_test=1)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(root.rglob("*.png")):
            zf.write(file, file.relative_to(root).as_posix())
        with zf.open("train/README.txt", "w", force_zip64=True) as big:
            block = bytes(1 << 20)
            for _ in range(64):  # 64 MiB of zeros, ~64 KiB compressed
                big.write(block)
    read: list[str] = []
    real = zipfile.ZipFile.read
    monkeypatch.setattr(
        zipfile.ZipFile, "read", lambda self, info, *a: read.append(str(info.filename)) or real(self, info, *a)
    )
    snap = ingest(str(archive), DataConfig(), tmp_path / "cache")
    assert snap.counts["train"] == [2, 2, 2] and "train/README.txt" not in read and len(read) == 9


def test_an_oversized_image_member_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import auditflow.core.data as data

    root = make_image_folder(tmp_path / "data", n_train=2, n_test=1)
    archive = tmp_path / "toy.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(root.rglob("*.png")):
            zf.write(file, file.relative_to(root).as_posix())
    monkeypatch.setattr(data, "MAX_IMAGE_BYTES", 100)
    with pytest.raises(DataError, match=r"archive .*toy\.zip entry 'test/circle/0000\.png' is 0 MiB; image files over"):
        ingest(str(archive), DataConfig(), tmp_path / "cache")


def test_a_class_folder_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", n_train=2, n_test=1)
    for split in ("train", "test"):
        os.rename(
            root / split / "circle",
            os.path.join(os.fsencode(root / split), b"caf\xe9").decode("utf-8", "surrogateescape"),
        )
    with pytest.raises(
        DataError, match=r"path 'test/caf\\\\xe9/0000\.png' is not valid UTF-8; rename the folder or file"
    ):
        ingest(str(root), DataConfig(), tmp_path / "cache")


def test_the_tutorial_net_refuses_other_image_sizes_at_load() -> None:
    from auditflow.core.config import load_config
    from auditflow.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.model='tutorial_net' takes 32x32 images only .* data.image_size=64"):
        load_config("tutorial", ["data.image_size=64"])
    assert load_config("quick", ["data.image_size=64"]).data.image_size == 64


def test_a_diverging_loss_stops_training_with_a_clear_error(image_folder: Path, tmp_path: Path) -> None:
    from auditflow.core.config import TrainConfig
    from auditflow.core.data import make_splits
    from auditflow.core.errors import ModelError
    from auditflow.models.runtime import resolve_runtime
    from auditflow.models.training import fit

    splits = make_splits(ingest(str(image_folder), DataConfig(), tmp_path / "cache"), DataConfig(val_fraction=0.25))
    cfg = TrainConfig(model="fastnet", width=8, epochs=3, batch_size=12, lr=1e30, precision="fp32", device="cpu")
    with pytest.raises(ModelError, match=r"training diverged at epoch 1: mean loss nan; lower train.lr \(now 1e\+30\)"):
        fit(splits, cfg, resolve_runtime("cpu", "fp32"), tmp_path / "ckpt")


def test_a_workdir_that_is_a_file_is_one_line_and_exit_2(image_folder: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from auditflow.cli import app

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["run", "--data", str(image_folder), "--workdir", str(blocker)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: --workdir '{blocker}' cannot be used as a folder: File exists"
