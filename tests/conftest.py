"""Shared fixtures. Prefect settings are fixed here, before any test imports Prefect."""

from __future__ import annotations

import importlib.util
import io
import os
import resource
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

# scripts/check.sh runs the suite on pytest-xdist workers (more workers than cores: many slow
# tests wait on a server or a subprocess). Each worker gets its own Prefect home (workers inherit
# the controller's environment) and one OpenMP thread, so that three workers on two cores do
# not oversubscribe them; a run on one process keeps torch's default.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="auditflow-prefect-")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="auditflow-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "auditflow")
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"  # compute tests log outside flows
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
# Inductor's on-disk cache, one per kernel family: code compiled in a run on the AVX-512 kernels,
# reused under ATEN_CPU_CAPABILITY=avx2 (NOTES.md), gave out-of-bounds indices in a compiled backward.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"torchinductor-tests-{os.environ.get('ATEN_CPU_CAPABILITY', 'default')}"),
)

CLASSES = ("circle", "square", "stripes")

# The longest files first, by their wall time in the last whole-suite run under CI's load (the
# sum of --durations per file; NOTES.md), so that no worker starts one of them last and the
# short files fill the end; everything else keeps the collection order.
LONGEST_FIRST = (
    "tests/test_flow.py",  # with test_review.py and test_names.py (`SHARED_RUN_FILES`)
    "tests/test_review.py",
    "tests/test_names.py",
    "tests/test_stack.py",
    "tests/test_cli.py",
    "tests/test_faults.py",
    "tests/test_tune_cli.py",
    "tests/test_dask.py",
    "tests/test_release.py",
    "tests/test_serve.py",
    "tests/test_training_small.py",
    "tests/test_install.py",
    "tests/test_transparency.py",
    "tests/test_tune.py",
    "tests/test_supervise.py",
    "tests/test_bench.py",
    "tests/test_export.py",
    "tests/test_distributed.py",
    "tests/test_tracking.py",
    "tests/test_models.py",
)


# The files whose tests read the session's one pipeline run (`shared_run`): one worker takes
# them all, so that the run is made once, not once per worker that needs it.
SHARED_RUN_FILES = ("tests/test_flow.py", "tests/test_review.py", "tests/test_names.py")


def pytest_configure(config: pytest.Config) -> None:
    """Import what `auditflow run` imports once, in the controller, before any worker or CLI
    subprocess starts. README command 2 installs with `pip --no-compile`, so the first import of
    each module compiles it to bytecode (about 12 s of CPU for torch, Prefect and MLflow), and a
    CLI subprocess run as another user (test_faults' read-only cases) cannot write that cache at
    all: the timing bounds would measure the compiler, not the CLI."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if importlib.util.find_spec("prefect") is None:  # a GPU machine with the compute modules only (NOTES.md)
        return
    import auditflow.cli
    import auditflow.flows.pipeline
    import auditflow.supervise  # noqa: F401


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, except that the files of `SHARED_RUN_FILES` are one unit of work."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedRunTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return SHARED_RUN_FILES[0] if scope in SHARED_RUN_FILES else scope

    return SharedRunTogether(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On pytest-xdist workers (`--dist loadfile`: a file's tests share a worker, so its module
    fixtures are set up once), the longest files first."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable


# Where the suite's CPU goes: AUDITFLOW_TEST_CPU_LOG=FILE appends, per test, the CPU seconds of
# its worker and of the subprocesses it waited for (setup, call and teardown), the wall seconds,
# the test's id, its xdist worker and its start (Unix time). `sort -rn FILE | head` lists the
# costliest; wall time alone hides which tests are slow and which waited for a core.
CPU_LOG = os.environ.get("AUDITFLOW_TEST_CPU_LOG")


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    if not CPU_LOG:
        yield
        return
    cpu, wall, start = _cpu_s(), time.monotonic(), time.time()
    yield
    worker = os.environ.get("PYTEST_XDIST_WORKER", "-")
    with open(CPU_LOG, "a") as log:
        log.write(f"{_cpu_s() - cpu:.1f}\t{time.monotonic() - wall:.1f}\t{item.nodeid}\t{worker}\t{start:.0f}\n")


def user_env(**extra: str) -> dict[str, str]:
    """The environment a user's `auditflow` subprocess gets: this one without the test
    session's Prefect API and MLflow store, plus `extra`."""
    return {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")} | extra


def _image(cls: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A learnable toy image: each class has its own colour and pattern, plus noise."""
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    if cls == 0:
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
        img[mask] = (220, 40, 40)
    elif cls == 1:
        img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (40, 220, 40)
    else:
        img[(xx // 4) % 2 == 0] = (40, 40, 220)
    return img


def make_image_folder(root: Path, n_train: int = 16, n_test: int = 8, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for k, cls in enumerate(CLASSES):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(_image(k, rng, size)).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class image folder: 16 train and 8 test PNGs per class, 32x32."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "toy")


@pytest.fixture(scope="session")
def image_tar(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archives") / "toy.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(image_folder, arcname="toy")
    return path


@pytest.fixture(scope="session")
def image_zip(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archives") / "toy.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(image_folder.rglob("*.png")):
            zf.write(file, f"toy/{file.relative_to(image_folder).as_posix()}")
    return path


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (about 10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness) -> str:
    """The session API's address, for `auditflow run` subprocesses whose test is not about the
    temporary server the CLI starts without one (test_cli's run and test_faults' stopped runs
    are): each such server costs 15-25 s of CPU on 2 cores."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def shared_run(prefect_harness, tmp_path_factory: pytest.TempPathFactory):
    """The session's one tiny pipeline run, every stage on, shared by the flow, review and
    naming tests: exactly what `tests/run_keys.py` runs (the toy folder with its first class
    renamed `circle|disc`, TINY + `privacy.queries=2` + a card owner holding a `|`).

    Returns (PipelineResult, Tracker, RunRecord of the parent, work folder). Tests may add
    runs of their own to its store, but never change this run."""
    from run_keys import SHARED_OVERRIDES, make_shared_data

    from auditflow.core.tracking import Tracker
    from auditflow.flows.pipeline import audit_pipeline

    root = tmp_path_factory.mktemp("shared")
    data, workdir = make_shared_data(root), root / "work"
    result = audit_pipeline(profile="quick", data=str(data), overrides=SHARED_OVERRIDES, workdir=str(workdir))
    tracker = Tracker(result.tracking_uri)
    return result, tracker, tracker.load_run(result.run_id), workdir


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def make_digits_archive(path: Path, size: int = 24, seed: int = 0) -> Path:
    """The user-style dataset of issue 7: sklearn's 1,797 handwritten digits (shipped with
    scikit-learn, no download), upscaled to `size` px grayscale PNG, class folders `zero`..`nine`,
    a stratified 80/20 train/test split, packed as tar.gz."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for k, name in enumerate(DIGIT_NAMES):
            idx = rng.permutation(np.flatnonzero(digits.target == k))
            n_test = len(idx) // 5
            for split, part in (("test", idx[:n_test]), ("train", idx[n_test:])):
                for i in part:
                    img = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L")
                    data = png_bytes(np.asarray(img.resize((size, size), Image.Resampling.BILINEAR)))
                    info = tarfile.TarInfo(f"digits/{split}/{name}/{i:04d}.png")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def digits_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_digits_archive(tmp_path_factory.mktemp("digits") / "digits.tar.gz")


def compiled_ema_config(runtime):
    """The GPU test's training case (compile + EMA + TTA) for `runtime`. Tests that compile on
    the CPU use this one config: Inductor's on-disk cache then compiles its graphs once per suite
    (a cold compile of a training step costs about 45 s of CPU on 2 cores, a cached one 2 s)."""
    from auditflow.core.config import TrainConfig

    precision = "bf16" if runtime.autocast_dtype is not None else "fp32"
    return TrainConfig(
        width=8,
        epochs=4,
        batch_size=12,
        lr=0.05,
        compile=True,
        ema_decay=0.9,
        tta=True,
        tta_translate=1,
        device=runtime.device.type,
        precision=precision,
    )


def compiled_ema_run(splits, runtime, checkpoint_dir: Path):
    """`compiled_ema_config`'s training run, on whatever `runtime` is given, so the CPU suite
    runs the same EMA path that the GPU test does."""
    from auditflow.models.training.fit import fit

    return fit(splits, compiled_ema_config(runtime), runtime, checkpoint_dir=checkpoint_dir)


MARGIN_LOG = os.environ.get("AUDITFLOW_MARGIN_LOG")  # a JSON-lines file: every learned figure a test judged


def at_least(name: str, value: float, floor: float) -> None:
    """Assert that a figure a short training run reached is at least `floor`, and record it in
    $AUDITFLOW_MARGIN_LOG when set, with the kernel family it ran on, so that the margin can be
    measured on both (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 gives the AVX2 kernels
    on an AVX-512 CPU; NOTES.md)."""
    if MARGIN_LOG:
        import json

        import torch

        record = {
            "name": name,
            "value": float(value),
            "floor": floor,
            "margin": float(value) - floor,
            "kernels": torch.backends.cpu.get_cpu_capability(),
        }
        with open(MARGIN_LOG, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
    assert value >= floor, f"{name}: {value} < {floor}"


def planted_predictions(right: np.ndarray, labels: np.ndarray, n_classes: int, members: int = 8):
    """A `Predictions` container whose shipped model (no TTA) is right exactly where `right` is
    True: each test image's logits peak at its label, or at the next class where it is wrong.
    The audit holds `members` members (training indices 0..) and as many non-members (the
    first test images); the validation split repeats the test split."""
    from auditflow.core.predictions import AuditPoints, Predictions

    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.where(right, labels, (labels + 1) % n_classes)
    logits = (3.0 * np.eye(n_classes)[predicted]).astype(np.float32)
    audit = AuditPoints(
        member_index=np.arange(members, dtype=np.int64),
        member_labels=labels[:members],
        member_logits=logits[:members],
        nonmember_index=np.arange(members, dtype=np.int64),
        nonmember_wanted=np.bincount(labels[:members], minlength=n_classes).astype(np.int64),
    )
    return Predictions(logits, logits, labels, logits, labels, audit)
