from __future__ import annotations

import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, make_image_folder, png_bytes

from auditflow.core.config import DataConfig
from auditflow.core.data import Snapshot, ingest, make_splits
from auditflow.core.errors import DataError, UnsafeArchiveError


def test_ingest_folder_builds_snapshot(image_folder: Path, tmp_path: Path) -> None:
    snap = ingest(str(image_folder), DataConfig(), tmp_path)
    assert snap.classes == CLASSES
    assert snap.counts == {"train": [16, 16, 16], "test": [8, 8, 8]}
    assert snap.image_shape == (32, 32, 3)
    x, y = snap.arrays("train")
    assert x.dtype == np.uint8 and x.shape == (48, 32, 32, 3)
    assert np.bincount(y).tolist() == [16, 16, 16]
    assert Snapshot.open(snap.path) == snap


def test_archives_give_the_same_content_digest(
    image_folder: Path, image_tar: Path, image_zip: Path, tmp_path: Path
) -> None:
    digests = {
        ingest(str(src), DataConfig(), tmp_path / src.name).digest for src in (image_folder, image_tar, image_zip)
    }
    assert len(digests) == 1


def test_unchanged_source_reuses_snapshot(image_tar: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = ingest(str(image_tar), DataConfig(), tmp_path)
    caplog.set_level("INFO", logger="auditflow.core.data")
    second = ingest(str(image_tar), DataConfig(), tmp_path)
    assert second.path == first.path
    assert "source unchanged; reusing snapshot" in caplog.text


def test_changed_folder_gives_new_snapshot(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", n_train=4, n_test=2)
    first = ingest(str(root), DataConfig(), tmp_path / "cache")
    os.remove(root / "train" / "circle" / "0000.png")
    second = ingest(str(root), DataConfig(), tmp_path / "cache")
    assert second.digest != first.digest
    assert second.counts["train"] == [3, 4, 4]


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^data path '/nonexistent/x' does not exist$"):
        ingest("/nonexistent/x", DataConfig(), tmp_path)


def test_plain_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hi")
    with pytest.raises(DataError, match=r"is neither a directory nor an archive"):
        ingest(str(path), DataConfig(), tmp_path)


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", n_train=2, n_test=2)
    (root / "train" / "square" / "0001.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot decode image train/square/0001\.png"):
        ingest(str(root), DataConfig(), tmp_path / "cache")
    assert not (tmp_path / "cache" / "snapshots").exists() or not any((tmp_path / "cache" / "snapshots").iterdir())


def test_wrong_size_rejected_or_resized(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", n_train=2, n_test=2, size=40)
    with pytest.raises(
        DataError, match=r"image train/circle/0000\.png is 40x40, expected 32x32; set data\.resize=true"
    ):
        ingest(str(root), DataConfig(), tmp_path / "c1")
    snap = ingest(str(root), DataConfig(resize=True), tmp_path / "c2")
    assert snap.image_shape == (32, 32, 3)


def test_16_bit_and_exif_rotated_images_are_converted_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 18: a 16-bit grayscale PNG was clipped to white (mean 254 against 127 scaled) and a
    JPEG with EXIF orientation 6 was stored unrotated, both silently."""
    from PIL import Image

    root = make_image_folder(tmp_path / "d", n_train=2, n_test=2)
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(root / "train" / "circle" / "0000.png")
    wide = np.zeros((32, 32, 3), np.uint8)
    wide[:8] = 255  # a white band along the top as stored; orientation 6 turns it to the right edge
    photo = Image.fromarray(wide)
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(root / "train" / "square" / "0000.jpg", quality=95, exif=exif.tobytes())
    caplog.set_level("WARNING", logger="auditflow")
    snap = ingest(str(root), DataConfig(), tmp_path / "cache")
    assert snap.conversions == {"exif_rotated": 1, "scaled_16bit": 1}
    assert Snapshot.open(snap.path).conversions == snap.conversions
    x, _ = snap.arrays("train")
    paths = snap.paths("train")
    gray = x[paths.index("train/circle/0000.png")]
    assert gray.dtype == np.uint8 and np.array_equal(gray[..., 0], gray[..., 2])  # gray stays gray
    assert abs(float(gray.mean()) - float(ramp.mean()) / 257) < 0.6  # scaled, not clipped (was 254)
    assert gray.max() == 255 and gray.min() == 0
    upright = x[paths.index("train/square/0000.jpg")].mean(axis=2)
    assert upright[:, -8:].mean() > 200 and upright[:8, :24].mean() < 50  # the band is on the right now
    assert "1 image(s) 16-bit: scaled to 8 bits" in caplog.text and "turned upright by their EXIF" in caplog.text


def test_classes_must_match_between_splits(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", n_train=2, n_test=2)
    shutil.rmtree(root / "test" / "stripes")
    with pytest.raises(
        DataError,
        match=r"classes differ between splits: train has \['circle', 'square', 'stripes'\], "
        r"test has \['circle', 'square'\]",
    ):
        ingest(str(root), DataConfig(), tmp_path / "cache")


def test_missing_split(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", n_train=2, n_test=2)
    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match=r"split folder\(s\) \['test'\] missing; found \['train'\]"):
        ingest(str(root), DataConfig(), tmp_path / "cache")


def _tar_with(path: Path, member: tarfile.TarInfo, payload: bytes | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        good = png_bytes(np.zeros((32, 32, 3), np.uint8))
        info = tarfile.TarInfo("d/train/a/0.png")
        info.size = len(good)
        tar.addfile(info, io.BytesIO(good))
        tar.addfile(member, io.BytesIO(payload) if payload is not None else None)
    return path


@pytest.mark.parametrize("name", ["../evil.png", "/etc/evil.png", "d/../../evil.png"])
def test_tar_entry_escaping_is_refused(tmp_path: Path, name: str) -> None:
    payload = png_bytes(np.zeros((32, 32, 3), np.uint8))
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive = _tar_with(tmp_path / "bad.tar", info, payload)
    with pytest.raises(UnsafeArchiveError, match=rf"entry '{name}' would escape the extraction folder"):
        ingest(str(archive), DataConfig(), tmp_path / "cache")
    assert not (tmp_path / "evil.png").exists()


def test_tar_symlink_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("d/train/a/link.png")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    archive = _tar_with(tmp_path / "bad.tar", info)
    with pytest.raises(
        UnsafeArchiveError, match=r"entry 'd/train/a/link\.png' is a link to '/etc/passwd'; links are not followed"
    ):
        ingest(str(archive), DataConfig(), tmp_path / "cache")


def test_zip_entry_escaping_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../evil.png", png_bytes(np.zeros((32, 32, 3), np.uint8)))
    with pytest.raises(UnsafeArchiveError, match=r"entry '\.\./\.\./evil\.png' would escape"):
        ingest(str(archive), DataConfig(), tmp_path / "cache")


def test_truncated_archive(tmp_path: Path, image_tar: Path) -> None:
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(image_tar.read_bytes()[:2000])
    with pytest.raises(DataError, match=r"cannot read archive .*broken\.tar\.gz"):
        ingest(str(broken), DataConfig(), tmp_path / "cache")


def test_splits_are_stratified_and_seeded(image_folder: Path, tmp_path: Path) -> None:
    snap = ingest(str(image_folder), DataConfig(), tmp_path)
    cfg = DataConfig(val_fraction=0.25, seed=3)
    a, b = make_splits(snap, cfg), make_splits(snap, cfg)
    assert np.bincount(a.val_y).tolist() == [4, 4, 4]
    assert np.bincount(a.train_y).tolist() == [12, 12, 12]
    assert np.array_equal(a.val_x, b.val_x)
    other = make_splits(snap, DataConfig(val_fraction=0.25, seed=4))
    assert not np.array_equal(a.val_x, other.val_x)
    # validation images are held out of training
    train_rows = {row.tobytes() for row in a.train_x}
    assert not any(row.tobytes() in train_rows for row in a.val_x)


def test_per_class_caps(image_folder: Path, tmp_path: Path) -> None:
    snap = ingest(str(image_folder), DataConfig(), tmp_path)
    s = make_splits(snap, DataConfig(val_fraction=0.0, max_train_per_class=5, max_test_per_class=2))
    assert np.bincount(s.train_y).tolist() == [5, 5, 5]
    assert np.bincount(s.test_y).tolist() == [2, 2, 2]
