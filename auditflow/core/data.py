"""The data contract: any supported source becomes a content-addressed uint8 snapshot.

Sources
- ``cifar10`` or ``cifar10:ROOT``: torchvision's CIFAR-10, downloaded into ROOT when absent.
- A directory in image-folder layout ``<split>/<class>/<file>`` with splits ``train`` and
  ``test`` (one wrapping top folder is allowed).
- A ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` of such a directory. Members are read in
  memory and validated: an absolute path, a ``..`` component or a link is refused, so nothing
  can land outside the snapshot folder and no link is followed.

A snapshot folder holds ``{split}_images.npy`` (uint8, N x H x W x 3), ``{split}_labels.npy``
(int64, N) and ``manifest.json`` (digest, classes, counts). Its name is the sha256 of the
pixels, labels and class names, so equal data gives the same folder; a small index keyed by
the source's fingerprint lets an unchanged source skip decoding altogether.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from auditflow.core.config import DataConfig
from auditflow.core.errors import DataError, UnsafeArchiveError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
PATHS_FILE = "paths.json"
SNAPSHOT_FORMAT = 2  # 2: image paths (split/class/file) are part of the content
# Part of the source fingerprint only: a change in how images are decoded re-reads an unchanged
# source, and identical pixels still hash to the same snapshot. 2: EXIF orientation, 16-bit scaling.
DECODER_VERSION = 2
MAX_IMAGE_BYTES = 64 << 20  # one image file larger than this is refused, unread (zip/tar bombs)
_PROGRESS_EVERY = 10_000

Reader = Callable[[], bytes]


# ---------------------------------------------------------------------------- source listing
def _check_member_name(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]) or ".." in path.parts:
        raise UnsafeArchiveError(f"archive {archive} entry {name!r} would escape the extraction folder; refusing it")
    return path


def _wanted(path: PurePosixPath) -> bool:
    """Image files outside hidden folders: the only members whose bytes are ever read."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in path.parts)


def _check_size(name: str, size: int, archive: Path) -> None:
    if size > MAX_IMAGE_BYTES:
        raise DataError(
            f"archive {archive} entry {name!r} is {size / 2**20:.0f} MiB; image files over "
            f"{MAX_IMAGE_BYTES >> 20} MiB are refused unread"
        )


def _iter_tar(archive: Path) -> Iterator[tuple[PurePosixPath, Reader]]:
    """Members are checked as listed; only wanted images are read, each capped in size (a
    compressed tar is a stream, so they are read in listing order, as they are met)."""
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                path = _check_member_name(member.name, archive)
                if member.issym() or member.islnk():
                    raise UnsafeArchiveError(
                        f"archive {archive} entry {member.name!r} is a link to "
                        f"{member.linkname!r}; links are not followed"
                    )
                if member.isdir():
                    continue
                if not member.isfile():
                    raise UnsafeArchiveError(f"archive {archive} entry {member.name!r} is not a regular file")
                if not _wanted(path):
                    continue  # never read: a huge text file in the archive costs nothing
                _check_utf8(path, archive)  # tarfile keeps bytes that are not UTF-8 as surrogates
                _check_size(member.name, member.size, archive)
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                yield path, (lambda data=data: data)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"cannot read archive {archive}: {err}") from err


def _iter_zip(archive: Path) -> Iterator[tuple[PurePosixPath, Reader]]:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                path = _check_member_name(_zip_name(info, archive), archive)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UnsafeArchiveError(
                        f"archive {archive} entry {info.filename!r} is a link; links are not followed"
                    )
                if info.is_dir() or not _wanted(path):
                    continue  # never read: a huge text file in the archive costs nothing
                _check_size(info.filename, info.file_size, archive)  # zipfile enforces the declared size
                data = zf.read(info)  # read now: the archive is closed once listing ends
                yield path, (lambda data=data: data)
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, zlib.error) as err:
        # RuntimeError: encrypted member; NotImplementedError: unsupported compression
        raise DataError(f"cannot read archive {archive}: {err}") from err


def _zip_name(info: zipfile.ZipInfo, archive: Path) -> str:
    """An entry's name as text. Names not flagged UTF-8 (bit 11) are decoded by zipfile as
    cp437, which turns UTF-8 bytes into other letters silently (`café` became `cafÃ©`): take
    their bytes back and read them as UTF-8, the encoding of every current zip tool; bytes
    that are not UTF-8 either are refused in one line, as they are in a plain folder."""
    if info.flag_bits & 0x800:
        return info.filename
    raw = info.filename.encode("cp437")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        shown = raw.decode("utf-8", "backslashreplace")
        raise DataError(f"{archive}: path {shown!r} is not valid UTF-8; rename the folder or file") from None


def _iter_dir(root: Path) -> Iterator[tuple[PurePosixPath, Reader]]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath, name)
            if full.is_symlink():
                continue
            rel = PurePosixPath(full.relative_to(root).as_posix())
            if not _wanted(rel):
                continue
            _check_utf8(rel, root)
            if full.stat().st_size > MAX_IMAGE_BYTES:
                raise DataError(f"image {full} is over {MAX_IMAGE_BYTES >> 20} MiB; refused unread")
            yield rel, (lambda full=full: full.read_bytes())


def _check_utf8(path: PurePosixPath, root: Path) -> None:
    """File systems allow names that are not UTF-8 (Python keeps their bytes as surrogates);
    class names must be text to go into the manifest, MLflow and the report."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
        raise DataError(f"{root}: path {shown!r} is not valid UTF-8; rename the folder or file") from None


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


# ---------------------------------------------------------------------------- decoding
# What decoding did to an image beyond reading it, counted into the snapshot's manifest and the
# datasheet: silent before (a 16-bit PNG came out white, a rotated photo sideways).
EXIF_ROTATED = "exif_rotated"  # turned upright by its EXIF orientation tag
SCALED_16BIT = "scaled_16bit"  # 16-bit samples scaled to 8 bits (value * 255 / 65535)
CONVERSIONS = {
    EXIF_ROTATED: "turned upright by their EXIF orientation tag",
    SCALED_16BIT: "16-bit: scaled to 8 bits (value x 255 / 65535), not clipped",
}


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grayscale image scaled to 8 bits; Pillow's own conversion
    clips every value above 255 to white."""
    values = np.asarray(img, dtype=np.int64)
    gray = (np.clip(values, 0, 65535) * 255 + 32767) // 65535
    return Image.fromarray(gray.astype(np.uint8), mode="L")


def _decode(name: str, payload: bytes, size: int, resize: bool) -> tuple[np.ndarray, tuple[str, ...]]:
    """(H x W x 3 uint8 pixels, what was done to the image: `CONVERSIONS` keys)."""
    done: list[str] = []
    try:
        with Image.open(io.BytesIO(payload)) as img:
            if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # exif_transpose copies either way
                img = ImageOps.exif_transpose(img)
                done.append(EXIF_ROTATED)
            if img.mode.startswith("I;16") or (img.mode == "I" and img.getextrema()[1] > 255):
                img = _to_8bit(img)
                done.append(SCALED_16BIT)
            img = img.convert("RGB")
            if img.size != (size, size):
                if not resize:
                    raise DataError(
                        f"image {name} is {img.size[0]}x{img.size[1]}, expected {size}x{size}; "
                        "set data.resize=true to resize"
                    )
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8), tuple(done)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {name}: {err}") from err


def _strip_wrappers(paths: list[PurePosixPath]) -> int:
    """How many leading folders all image paths share before the split folder."""
    depth = 0
    while paths and all(len(p.parts) > depth + 1 for p in paths):
        heads = {p.parts[depth] for p in paths}
        if len(heads) != 1 or next(iter(heads)) in SPLITS:
            break
        depth += 1
    return depth


def _read_image_folder(
    entries: Iterator[tuple[PurePosixPath, Reader]], source: str, cfg: DataConfig
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], tuple[str, ...], dict[str, list[str]], dict[str, int]]:
    """(images, labels, classes, paths, conversions) per split; paths are `split/class/file`, in
    image order; conversions counts the images each `CONVERSIONS` step was applied to."""
    images: list[tuple[PurePosixPath, Reader]] = [(p, r) for p, r in entries if _wanted(p)]
    if not images:
        raise DataError(f"no images found in {source}; expected <split>/<class>/<image> files")
    depth = _strip_wrappers([p for p, _ in images])
    by_split: dict[str, dict[str, list[tuple[str, Reader]]]] = {}
    relative: dict[str, str] = {}
    for path, reader in images:
        parts = path.parts[depth:]
        if len(parts) != 3:
            raise DataError(f"{source}: image {path} is not at <split>/<class>/<file>; splits must be {list(SPLITS)}")
        split, cls, _ = parts
        if split not in SPLITS:
            raise DataError(f"{source}: unknown split folder {split!r} (in {path}); expected {list(SPLITS)}")
        by_split.setdefault(split, {}).setdefault(cls, []).append((str(path), reader))
        relative[str(path)] = "/".join(parts)
    missing = [s for s in SPLITS if s not in by_split]
    if missing:
        raise DataError(f"{source}: split folder(s) {missing} missing; found {sorted(by_split)}")
    classes = tuple(sorted(by_split["train"]))
    for split in SPLITS:
        if tuple(sorted(by_split[split])) != classes:
            raise DataError(
                f"{source}: classes differ between splits: train has {list(classes)}, "
                f"{split} has {sorted(by_split[split])}"
            )
    if len(classes) < 2:
        raise DataError(f"{source}: need at least 2 classes, found {list(classes)}")

    total = sum(len(files) for split in by_split.values() for files in split.values())
    done = 0
    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    names: dict[str, list[str]] = {}
    converted: dict[str, list[str]] = {key: [] for key in CONVERSIONS}
    for split in SPLITS:
        pixels, labels, names[split] = [], [], []
        for label, cls in enumerate(classes):
            for name, reader in sorted(by_split[split][cls], key=lambda item: item[0]):
                image, done_to_it = _decode(name, reader(), cfg.image_size, cfg.resize)
                pixels.append(image)
                for key in done_to_it:
                    converted[key].append(name)
                labels.append(label)
                names[split].append(relative[name])
                done += 1
                if done % _PROGRESS_EVERY == 0:
                    log.info("decoded %d/%d images", done, total)
        xs[split] = np.stack(pixels)
        ys[split] = np.asarray(labels, dtype=np.int64)
    for key, files in converted.items():
        if files:
            log.warning("%d image(s) %s, e.g. %s", len(files), CONVERSIONS[key], files[0])
    return xs, ys, classes, names, {key: len(files) for key, files in converted.items() if files}


def _read_torchvision_cifar10(root: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], tuple[str, ...]]:
    from torchvision.datasets import CIFAR10  # heavy import, only for this source

    xs, ys = {}, {}
    classes: tuple[str, ...] = ()
    for split in SPLITS:
        try:
            ds = CIFAR10(root=str(root), train=split == "train", download=True)
        except Exception as err:  # torchvision raises URLError, RuntimeError, ...
            raise DataError(
                f"cannot load torchvision CIFAR-10 from {root} (download failed or files corrupt): {err}. "
                "Offline, pass an image-folder directory or archive instead"
            ) from err
        xs[split] = np.ascontiguousarray(ds.data, dtype=np.uint8)
        ys[split] = np.asarray(ds.targets, dtype=np.int64)
        classes = tuple(ds.classes)
    return xs, ys, classes


# ---------------------------------------------------------------------------- snapshot
@dataclass(frozen=True)
class Snapshot:
    """A materialised dataset: where it lives and what it holds."""

    path: Path
    digest: str
    classes: tuple[str, ...]
    counts: dict[str, list[int]]  # split -> images per class
    image_shape: tuple[int, int, int]  # H, W, C
    source: str
    conversions: dict[str, int] = field(default_factory=dict)  # CONVERSIONS key -> images it was applied to

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def paths(self, split: str) -> list[str] | None:
        """Image paths (`split/class/file`) of one split in array order; None for sources
        without files (torchvision)."""
        file = self.path / PATHS_FILE
        return json.loads(file.read_text())[split] if file.is_file() else None

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 N x H x W x 3, labels int64 N) of one split, memory-mapped."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected {list(SPLITS)}")
        return (
            np.load(self.path / f"{split}_images.npy", mmap_mode="r"),
            np.load(self.path / f"{split}_labels.npy"),
        )

    @classmethod
    def open(cls, path: str | Path) -> Snapshot:
        path = Path(path)
        try:
            manifest = json.loads((path / "manifest.json").read_text())
            return cls(
                path=path,
                digest=manifest["digest"],
                classes=tuple(manifest["classes"]),
                counts=manifest["counts"],
                image_shape=tuple(manifest["image_shape"]),
                source=manifest["source"],
                conversions=manifest.get("conversions", {}),
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path} is not a snapshot folder (manifest.json unreadable or incomplete): {err}") from err


def verify_snapshot(snapshot: Snapshot) -> str | None:
    """Why `snapshot` cannot be reused (a truncated or altered array file), or None when its
    arrays still hash to the digest in its manifest. Costs one read of the arrays (about 0.5 s
    for CIFAR-10's 180 MB)."""
    try:
        xs, ys = {}, {}
        for split in SPLITS:
            xs[split], ys[split] = snapshot.arrays(split)
        actual = _content_digest(xs, ys, snapshot.classes, _paths_of(snapshot))
    except (OSError, ValueError, EOFError) as err:
        return f"{type(err).__name__}: {err}"
    return None if actual == snapshot.digest else f"its arrays hash to {actual[:12]}, not {snapshot.digest[:12]}"


def _reusable(folder: Path) -> Snapshot | None:
    """The snapshot in `folder` if it is intact; a damaged one is removed with a warning."""
    if not (folder / "manifest.json").is_file():
        return None
    try:
        snapshot = Snapshot.open(folder)
        problem = verify_snapshot(snapshot)
    except DataError as err:
        problem = str(err)
    if problem is None:
        return snapshot
    log.warning("snapshot %s is damaged (%s); rebuilding it from the source", folder, problem)
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _paths_of(snapshot: Snapshot) -> dict[str, list[str]] | None:
    file = snapshot.path / PATHS_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def _content_digest(
    xs: dict[str, np.ndarray],
    ys: dict[str, np.ndarray],
    classes: tuple[str, ...],
    paths: dict[str, list[str]] | None = None,
) -> str:
    h = hashlib.sha256(json.dumps([SNAPSHOT_FORMAT, list(classes), paths]).encode())
    for split in SPLITS:
        h.update(split.encode())
        h.update(np.ascontiguousarray(xs[split]).data)
        h.update(np.ascontiguousarray(ys[split]).data)
    return h.hexdigest()


def _source_fingerprint(kind: str, path: Path, cfg: DataConfig) -> str | None:
    """A cheap fingerprint of the raw source, or None when it cannot be had cheaply."""
    h = hashlib.sha256(json.dumps([SNAPSHOT_FORMAT, DECODER_VERSION, kind, cfg.image_size, cfg.resize]).encode())
    if kind == "archive":
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    if kind == "dir":
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                st = os.lstat(os.path.join(dirpath, name))
                rel = os.path.relpath(os.path.join(dirpath, name), path)
                # fsencode: names that are not UTF-8 still fingerprint (and fail later, named)
                h.update(os.fsencode(rel) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    return None


def _write_snapshot(
    xs: dict[str, np.ndarray],
    ys: dict[str, np.ndarray],
    classes: tuple[str, ...],
    source: str,
    cache_dir: Path,
    paths: dict[str, list[str]] | None = None,
    conversions: dict[str, int] | None = None,
) -> Snapshot:
    digest = _content_digest(xs, ys, classes, paths)
    final = cache_dir / "snapshots" / digest[:16]
    existing = _reusable(final)
    if existing is not None:
        return existing
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        for split in SPLITS:
            np.save(tmp / f"{split}_images.npy", xs[split])
            np.save(tmp / f"{split}_labels.npy", ys[split])
        if paths is not None:
            (tmp / PATHS_FILE).write_text(json.dumps(paths))
        manifest = {
            "format": SNAPSHOT_FORMAT,
            "digest": digest,
            "classes": list(classes),
            "counts": {s: np.bincount(ys[s], minlength=len(classes)).tolist() for s in SPLITS},
            "image_shape": list(xs["train"].shape[1:]),
            "source": source,
            "conversions": conversions or {},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        try:
            tmp.rename(final)  # atomic: a half-written snapshot is never visible
        except OSError:
            if not (final / "manifest.json").is_file():  # lost a race to an identical writer?
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Snapshot.open(final)


def ingest(source: str, cfg: DataConfig, cache_dir: str | Path) -> Snapshot:
    """Turn `source` into a validated snapshot under `cache_dir`, reusing an unchanged one.

    Raises `DataError` (or `UnsafeArchiveError`) naming the bad path, entry or image.
    """
    cache_dir = Path(cache_dir)
    if source == "cifar10" or source.startswith("cifar10:"):
        root = Path(source.partition(":")[2] or cache_dir / "torchvision")
        kind, path = "torchvision", root
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"data path {source!r} does not exist")
        if path.is_dir():
            kind = "dir"
        elif path.is_file() and _is_archive(path):
            kind = "archive"
        else:
            raise DataError(
                f"data path {source!r} is neither a directory nor an archive ({', '.join(ARCHIVE_SUFFIXES)})"
            )
        if not os.access(path, os.R_OK):
            raise DataError(f"data path {source!r} is not readable")

    fingerprint = _source_fingerprint(kind, path, cfg)
    index = cache_dir / "sources" / f"{fingerprint}.json" if fingerprint else None
    if index is not None and index.is_file():
        cached = _reusable(cache_dir / "snapshots" / json.loads(index.read_text())["snapshot"])
        if cached is not None:
            log.info("source unchanged; reusing snapshot %s (verified)", cached.path.name)
            return cached

    log.info("reading %s (%s)", source, kind)
    if kind == "torchvision":
        xs, ys, classes = _read_torchvision_cifar10(path)
        paths, conversions = None, {}
    else:
        entries = (
            _iter_dir(path)
            if kind == "dir"
            else (_iter_zip(path) if path.name.lower().endswith(".zip") else _iter_tar(path))
        )
        xs, ys, classes, paths, conversions = _read_image_folder(entries, source, cfg)
    snapshot = _write_snapshot(xs, ys, classes, str(source), cache_dir, paths, conversions)
    if index is not None:
        index.parent.mkdir(parents=True, exist_ok=True)
        index.write_text(json.dumps({"snapshot": snapshot.path.name, "source": str(source)}))
    log.info(
        "snapshot %s: %d classes, %s",
        snapshot.digest[:12],
        snapshot.num_classes,
        {s: sum(c) for s, c in snapshot.counts.items()},
    )
    return snapshot


# ---------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Splits:
    """Arrays of one run: train (members), validation and test (non-members). uint8 NHWC."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    test_paths: tuple[str, ...] | None = None  # `test/class/file` per test image; None without files


def _cap_per_class(labels: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    if cap is None:
        return np.arange(len(labels))
    keep = [rng.permutation(np.flatnonzero(labels == c))[:cap] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def make_splits(snapshot: Snapshot, cfg: DataConfig) -> Splits:
    """Deterministic (seeded) subsampling and stratified validation hold-out of a snapshot."""
    rng = np.random.default_rng(cfg.seed)
    train_x, train_y = snapshot.arrays("train")
    test_x, test_y = snapshot.arrays("test")
    keep = _cap_per_class(train_y, cfg.max_train_per_class, rng)
    train_x, train_y = np.asarray(train_x[keep]), train_y[keep]
    keep = _cap_per_class(test_y, cfg.max_test_per_class, rng)
    test_x, test_y = np.asarray(test_x[keep]), test_y[keep]
    paths = snapshot.paths("test")
    test_paths = tuple(paths[i] for i in keep) if paths is not None else None
    val_mask = np.zeros(len(train_y), dtype=bool)
    if cfg.val_fraction > 0:
        for c in np.unique(train_y):
            idx = rng.permutation(np.flatnonzero(train_y == c))
            val_mask[idx[: round(len(idx) * cfg.val_fraction)]] = True
    return Splits(
        train_x=train_x[~val_mask],
        train_y=train_y[~val_mask],
        val_x=train_x[val_mask],
        val_y=train_y[val_mask],
        test_x=test_x,
        test_y=test_y,
        classes=snapshot.classes,
        test_paths=test_paths,
    )
