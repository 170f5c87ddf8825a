"""Figures stay readable for any class count (issue 18: with 120 classes the confusion matrix
was 7,480 x 6,358 px with unreadable labels, the exposure plot's labels piled up, and the
datasheet's example grid made it 9.6 MB). Each figure over `MAX_CLASSES_SHOWN` classes shows
the classes a reader needs and says which in its title; the full tables are data."""

from __future__ import annotations

import numpy as np
import pytest

from auditflow.audits.plots import (
    MAX_CLASSES_SHOWN,
    confident_mistakes,
    confused_classes,
    confusion_figure,
    examples_figure,
    exposure_figure,
    mistakes_figure,
    recall_figure,
    to_png,
)

K = 120
NAMES = [f"class-{k:03d}" for k in range(K)]


def _pixels(fig) -> tuple[int, int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(to_png(fig))) as img:
        return img.size


def test_confused_classes_are_both_sides_of_the_largest_confusions() -> None:
    cm = np.diag(np.full(6, 10))
    cm[1, 4] = 6  # 1 taken for 4: the largest share off the diagonal
    cm[2, 0] = 3
    cm[5, 3] = 1
    assert confused_classes(cm.astype(float), limit=4) == [0, 1, 2, 4]
    assert confused_classes(cm.astype(float), limit=2) == [1, 4]


def test_many_classes_give_bounded_figures_that_say_what_they_show() -> None:
    rng = np.random.default_rng(0)
    cm = np.diag(rng.integers(3, 6, K))
    cm[7, 99] = 4  # the largest confusion: both classes must be shown
    fig = confusion_figure(cm.tolist(), NAMES)
    ax = fig.axes[0]
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert len(shown) == MAX_CLASSES_SHOWN and {"class-007", "class-099"} <= set(shown)
    assert "of 120" in ax.get_title() and "confusion_matrix.csv" in ax.get_title()
    width, height = _pixels(fig)
    assert width < 2500 and height < 2500, (width, height)  # was 7,480 x 6,358

    per_class = [{"class": n, "recall": r} for n, r in zip(NAMES, rng.random(K), strict=True)]
    fig = recall_figure(per_class, 0.5)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    lowest = sorted(per_class, key=lambda r: r["recall"])[:MAX_CLASSES_SHOWN]
    assert labels == [r["class"] for r in lowest]
    assert _pixels(fig)[1] < 1500

    exposure = {"classes": NAMES, "error_rate": rng.random(K).tolist(), "attack_auc": rng.random(K).tolist()}
    fig = exposure_figure(exposure, "loss")
    assert 0 < len(fig.axes[0].texts) <= MAX_CLASSES_SHOWN // 2
    assert "120 classes" in fig.axes[0].get_title()

    labels_y = np.repeat(np.arange(K), 3)
    labels_y = np.concatenate([labels_y, np.arange(1, K)])  # class 0 has 3 images, the others 4: 0 is rarest
    images = rng.integers(0, 255, (len(labels_y), 8, 8, 3), dtype=np.uint8)
    fig = examples_figure(images, labels_y, NAMES, per_class=3)
    assert len(fig.axes) == MAX_CLASSES_SHOWN * 3 and fig.axes[0].get_ylabel() == "class-000"
    assert len(to_png(fig)) < 1_000_000


@pytest.mark.parametrize("k", [2, 10, MAX_CLASSES_SHOWN])
def test_few_classes_show_every_class(k: int) -> None:
    names = NAMES[:k]
    fig = confusion_figure(np.eye(k, dtype=int).tolist(), names)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == names
    assert fig.axes[0].get_title() == "Confusion matrix (test)"


def test_the_most_confident_mistakes_are_picked_per_true_class() -> None:
    """Class 0: images 1 and 2 are wrong, 2 more confidently; class 1: none wrong; class 2:
    image 5 wrong. At most `per_class` each, most confident first."""
    logits = np.array(
        [[5, 0, 0], [0, 1, 0], [0, 4, 0], [0, 3, 0], [0, 2, 0], [0, 0.5, 0.1], [0, 0, 9]], dtype=np.float32
    )
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    assert confident_mistakes(logits, labels, per_class=4) == {0: [2, 1], 1: [], 2: [5]}
    assert confident_mistakes(logits, labels, per_class=1) == {0: [2], 1: [], 2: [5]}
    images = np.zeros((7, 8, 8, 1), np.uint8)
    fig = mistakes_figure(images, labels, logits, classes=("a", "b", "c"), per_class=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["b 0.96", "b 0.58", "b 0.44"]  # predicted class and its probability
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["a", "b", "c"]
