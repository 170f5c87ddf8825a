"""A datasheet for the data (after Gebru et al., "Datasheets for Datasets"): source and licence
as the user states them, class counts per split, image size and preprocessing, a train/test
duplicate check and example images per class.

`duplicate_check` runs at ingest on the arrays; `build_datasheet` reads the run back from
MLflow (`RunRecord`) and nothing else, like the report.

Near duplicates use a 64-bit difference hash (dHash: is each of 8 x 8 grey cells brighter than
its right neighbour, on a 9 x 8 area-averaged thumbnail). Written here in numpy rather than
with `imagehash`, which is not installed and would add PyWavelets for one function: this is
twenty lines, vectorised over the whole split, and the Hamming search is a chunked XOR and
popcount.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auditflow.audits.documents import md_cell, number, render_document, write_document
from auditflow.core.names import Ingest, Stage, per_class
from auditflow.core.tracking import RunRecord

HASH_W, HASH_H = 9, 8
SPLITS = ("train", "validation", "test")
METRICS = {  # datasheet field -> the ingest stage's metric
    "n_classes": Ingest.N_CLASSES,
    "image_height_px": Ingest.IMAGE_HEIGHT_PX,
    "image_width_px": Ingest.IMAGE_WIDTH_PX,
    "image_channels": Ingest.IMAGE_CHANNELS,
    "exact_duplicates": Ingest.EXACT_DUPLICATES,
    "near_duplicates": Ingest.NEAR_DUPLICATES,
    "near_duplicate_share": Ingest.NEAR_DUPLICATE_SHARE,
    "duplicate_max_distance": Ingest.DUPLICATE_MAX_DISTANCE,
}


def _area_resize(grey: np.ndarray, height: int, width: int) -> np.ndarray:
    """Mean over a near-equal grid of cells: N x H x W -> N x height x width."""
    rows = np.floor(np.arange(height) * grey.shape[1] / height).astype(int)
    cols = np.floor(np.arange(width) * grey.shape[2] / width).astype(int)
    sums = np.add.reduceat(np.add.reduceat(grey, rows, axis=1), cols, axis=2)
    counts = np.outer(np.diff(np.append(rows, grey.shape[1])), np.diff(np.append(cols, grey.shape[2])))
    return sums / counts


def dhash(images: np.ndarray) -> np.ndarray:
    """64-bit difference hashes (uint64, one per image) of uint8 N x H x W x C images."""
    grey = images.astype(np.float32).mean(axis=3) if images.ndim == 4 else images.astype(np.float32)
    thumb = _area_resize(grey, HASH_H, HASH_W)
    bits = (thumb[:, :, 1:] > thumb[:, :, :-1]).reshape(len(images), 64)
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").ravel()


@dataclass(frozen=True)
class DuplicateResult:
    """Test images that also occur in the training data: byte-identical, or within
    `max_distance` bits of a training image's dHash (near duplicates include exact ones)."""

    exact: int  # test images with a byte-identical training image
    near: int  # test images with a training image within max_distance bits
    n_test: int
    n_train: int
    max_distance: int  # bits of 64


def duplicate_check(train: np.ndarray, test: np.ndarray, *, max_distance: int, chunk: int = 256) -> DuplicateResult:
    """Exact and near duplicates of the `test` images among the `train` images (uint8 NHWC)."""
    seen = {hashlib.sha1(img.tobytes()).digest() for img in train}
    exact = sum(hashlib.sha1(img.tobytes()).digest() in seen for img in test)
    near = 0
    if len(train) and len(test):
        train_h, test_h = dhash(train), dhash(test)
        for start in range(0, len(test_h), chunk):  # chunk x n_train uint64: bounded memory
            distance = np.bitwise_count(test_h[start : start + chunk, None] ^ train_h[None, :])
            near += int((distance.min(axis=1) <= max_distance).sum())
    return DuplicateResult(int(exact), near, len(test), len(train), max_distance)


def build_datasheet(record: RunRecord) -> dict[str, Any]:
    """The datasheet of pipeline run `record` as a document dict (numbers carry their MLflow source)."""
    s = record.summaries.get(Stage.INGEST, {})
    card = record.config.get("card", {})
    data = record.config.get("data", {})
    classes = s.get("classes", [])
    keys = s.get("class_keys", classes)
    n = {name: number(record, Stage.INGEST, metric) for name, metric in METRICS.items()}
    return {
        "schema": "auditflow-datasheet/1 (after Gebru et al., Datasheets for Datasets)",
        "dataset": {
            "source": card.get("data_source") or s.get("source", "unknown"),
            "data_argument": s.get("source", "unknown"),
            "licence": card.get("data_licence", "unspecified"),
            "digest": s.get("digest", ""),
            "mlflow_run": record.run_id,
        },
        "composition": {
            "classes": n["n_classes"],
            "images": {split: number(record, Stage.INGEST, Ingest.IMAGES.format(split=split)) for split in SPLITS},
            "per_class": [
                {
                    "class": c,
                    **{
                        split: number(record, Stage.INGEST, per_class(Ingest.IMAGES.format(split=split), k))
                        for split in SPLITS
                    },
                }
                for c, k in zip(classes, keys, strict=True)
            ],
        },
        "images": {"height_px": n["image_height_px"], "width_px": n["image_width_px"], "channels": n["image_channels"]},
        "preprocessing": s.get("preprocessing", []),
        "splits": {
            "validation": f"a stratified {data.get('val_fraction', '?')} of the training split "
            f"(seed {data.get('seed', '?')})",
            "members": "the training split is what the model was fit on (members for the privacy audit)",
            "non_members": "the test split was never trained on (non-members)",
        },
        "duplicates": {
            "method": "exact: SHA-1 of the pixels; near: 64-bit difference hash (dHash) within the distance below",
            "max_distance_bits": n["duplicate_max_distance"],
            "exact": n["exact_duplicates"],
            "near": n["near_duplicates"],
            "near_share": n["near_duplicate_share"],
        },
        "examples_artifact": Ingest.EXAMPLES_PNG,
    }


def render_datasheet(record: RunRecord, figures: dict[str, str]) -> tuple[str, str, dict[str, Any]]:
    """(Markdown, HTML, document) of the datasheet; `figures["examples"]` is the base64 PNG grid."""
    doc = build_datasheet(record)
    md, html = render_document("datasheet.md.j2", doc, title=f"Datasheet: {md_cell(record.name)}", figures=figures)
    return md, html, doc


def write_datasheet(record: RunRecord, out: Path, figures: dict[str, str]) -> dict[str, Path]:
    md, html, doc = render_datasheet(record, figures)
    return write_document(out, "datasheet", md=md, html=html, doc=doc)
