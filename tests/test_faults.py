"""Faults and hostile input at the data layer: each ends with an error naming the problem,
or is repaired, and never with a traceback or a silently wrong model."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder, user_env
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from PIL import Image
from test_flow import TINY

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


def _archive_with_class_named(tmp_path: Path, kind: str, raw: bytes) -> Path:
    """A toy archive whose `circle` class folder is named by the bytes `raw`: a GNU tar (raw
    bytes in its headers), or a zip whose names are not flagged UTF-8 (bit 11 clear), as older
    tools write them. The zip is written with an ASCII stand-in of the same length, then the
    bytes are put in place (zipfile itself always flags non-ASCII names)."""
    root = make_image_folder(tmp_path / "data", n_train=2, n_test=1)
    files = sorted(root.rglob("*.png"))
    if kind == "tar":
        path = tmp_path / "toy.tar"
        name = raw.decode("utf-8", "surrogateescape")
        with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
            for file in files:
                tar.add(file, f"toy/{file.relative_to(root).as_posix()}".replace("/circle/", f"/{name}/"))
        return path
    path = tmp_path / "toy.zip"
    stand_in = b"C" * len(raw)
    with zipfile.ZipFile(path, "w") as zf:
        for file in files:
            zf.write(file, f"toy/{file.relative_to(root).as_posix()}".replace("/circle/", f"/{stand_in.decode()}/"))
    path.write_bytes(path.read_bytes().replace(b"/" + stand_in + b"/", b"/" + raw + b"/"))
    return path


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_archive_names_that_are_not_utf8_are_named_like_a_folders(tmp_path: Path, kind: str) -> None:
    """Issue 18: a tar's non-UTF-8 class folder gave 39 logging tracebacks and an error blaming
    the MLflow store; a zip without the UTF-8 flag silently made the class `c\\xa0■`."""
    archive = _archive_with_class_named(tmp_path, kind, b"c\xa0\xfe")
    with pytest.raises(DataError, match=r"path 'toy/test/c\\\\xa0\\\\xfe/0000\.png' is not valid UTF-8; rename"):
        ingest(str(archive), DataConfig(), tmp_path / "cache")


def test_a_zip_of_utf8_names_without_the_flag_keeps_its_class_names(tmp_path: Path) -> None:
    archive = _archive_with_class_named(tmp_path, "zip", "café".encode())
    assert ingest(str(archive), DataConfig(), tmp_path / "cache").classes == ("café", "square", "stripes")


@pytest.mark.slow
def test_a_tar_with_a_non_utf8_class_is_one_line_from_the_cli(tmp_path: Path) -> None:
    archive = _archive_with_class_named(tmp_path, "tar", b"c\xa0\xfe")
    env = user_env()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("auditflow")), "run", "--data", str(archive), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Logging error" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and r"toy/test/c\\xa0\\xfe/0000.png' is not valid UTF-8" in errors[0], done.stderr[-3000:]
    assert done.stderr.rstrip().splitlines()[-1] == errors[0]  # nothing after the error line


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
    from auditflow.models.training.fit import fit
    from auditflow.models.training.runtime import resolve_runtime

    splits = make_splits(ingest(str(image_folder), DataConfig(), tmp_path / "cache"), DataConfig(val_fraction=0.25))
    cfg = TrainConfig(model="fastnet", width=8, epochs=3, batch_size=12, lr=1e30, precision="fp32", device="cpu")
    with pytest.raises(ModelError, match=r"training diverged at epoch 1: mean loss nan; lower train.lr \(now 1e\+30\)"):
        fit(splits, cfg, resolve_runtime("cpu", "fp32"), checkpoint_dir=tmp_path / "ckpt")


def test_a_workdir_that_is_a_file_is_one_line_and_exit_2(image_folder: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from auditflow.cli import app

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["run", "--data", str(image_folder), "--workdir", str(blocker)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: --workdir '{blocker}' cannot be used as a folder: File exists"


# ---------------------------------------------------------------- the tracking store and the work folder
# Each of these fails before any work: one `error:` line naming the problem and what to do,
# exit code 2, within 30 s (the bound is the fail-fast promise itself, far from the ~2 s taken).
FAIL_FAST_S = 30


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's finished children."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="module")
def fault_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the tests below (creating one takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _invoke(args: list[str]) -> tuple[int, str, float]:
    from typer.testing import CliRunner

    from auditflow.cli import app

    start = time.monotonic()
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output.strip(), time.monotonic() - start


def test_an_unreachable_tracking_server_fails_at_once_in_one_line(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for args in (
        ["run", "--data", str(image_folder), "--workdir", str(tmp_path)],
        ["report", "0123abcd", "--workdir", str(tmp_path)],  # said "run id not found" after 249 s
        ["models", "--workdir", str(tmp_path)],
    ):
        code, output, seconds = _invoke(args)
        assert code == 2 and seconds < FAIL_FAST_S, (args, output)
        assert re.fullmatch(
            rf"error: cannot reach the MLflow store at {re.escape(uri)}: \[Errno 111\] Connection refused; start the "
            r"tracking server or point MLFLOW_TRACKING_URI \(or tracking.tracking_uri\) at one that runs",
            output,
        ), output


def _unprivileged() -> list[str]:
    """A command prefix that runs a command as `nobody` when the tests run as root (as CI does),
    who ignores the mode bits that make a folder read-only."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without util-linux's setpriv: cannot make a folder read-only")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.slow
def test_a_read_only_workdir_or_store_fails_at_once_naming_it() -> None:
    import sqlite3

    base = Path(tempfile.mkdtemp(prefix="auditflow-ro-"))  # not under pytest's 0700 folders
    try:
        base.chmod(0o755)
        data = make_image_folder(base / "data", n_train=1, n_test=1)
        read_only = base / "read-only"
        read_only.mkdir(mode=0o555)
        writable = base / "writable"
        writable.mkdir(mode=0o777)
        writable.chmod(0o777)  # past the umask
        db = writable / "mlflow.db"
        sqlite3.connect(db).close()
        db.chmod(0o444)
        cli = str(Path(sys.executable).with_name("auditflow"))
        for workdir, expected in (
            (read_only, f"error: --workdir folder '{read_only}' is not writable: Permission denied"),
            (writable, f"error: the MLflow store {db} cannot be opened for writing: Permission denied"),
        ):
            start = time.monotonic()
            done = subprocess.run(
                [*_unprivileged(), cli, "run", "--data", str(data), "--workdir", str(workdir)],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert time.monotonic() - start < FAIL_FAST_S  # was 339 s of retries, then a traceback
            assert done.returncode == 2, done.stderr
            assert done.stderr.strip() == expected
    finally:
        (base / "read-only").chmod(0o755)
        shutil.rmtree(base)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["junk prefect.db", "read-only HOME"])
def test_a_bad_prefect_home_fails_within_10_s_naming_it(case: str) -> None:
    """Issue 18: a `prefect.db` that is not a database, or a read-only HOME (Prefect's default
    home is ~/.prefect), printed 20-22 tracebacks and 5,178 lines and timed out after 136 s
    naming neither. Now one line naming the file or folder and what to do, within 10 s."""
    base = Path(tempfile.mkdtemp(prefix="auditflow-prefect-home-"))  # not under pytest's 0700 folders
    try:
        base.chmod(0o755)
        data = make_image_folder(base / "data", n_train=1, n_test=1)
        work = base / "work"
        work.mkdir(mode=0o777)
        work.chmod(0o777)
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_API_URL")}
        prefix: list[str] = []
        if case == "junk prefect.db":
            home = base / "prefect"
            home.mkdir()
            (home / "prefect.db").write_bytes(b"not a database\n" * 100)
            env["PREFECT_HOME"] = str(home)
            db = home / "prefect.db"
            expected = (
                f"error: Prefect's database {db} is not an SQLite database (damaged or another file); move it aside "
                f"(mv {db} {db}.bad) and Prefect starts a new one (its flow-run history only; MLflow keeps every "
                "run), or set PREFECT_HOME to another folder"
            )
        else:
            read_only = base / "home"
            read_only.mkdir(mode=0o555)
            env["HOME"] = str(read_only)
            prefix = _unprivileged()
            expected = (
                f"error: Prefect's home {read_only / '.prefect'} (PREFECT_HOME) cannot be created: Permission denied; "
                "set PREFECT_HOME to a writable folder"
            )
        cli = str(Path(sys.executable).with_name("auditflow"))
        start, cpu_before = time.monotonic(), _children_cpu_s()
        done = subprocess.run(
            [*prefix, cli, "run", "--data", str(data), "--workdir", str(work)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        # 10 s of the CLI's own CPU (alone on the machine, that is its wall time: 4-6 s measured);
        # the wall clock gets 3x that, as three test workers share two cores, and still catches
        # the 136 s of waiting on a server that cannot start
        cpu_s, wall_s = _children_cpu_s() - cpu_before, time.monotonic() - start
        assert cpu_s < 10 and wall_s < 30, (cpu_s, wall_s, done.stderr[-2000:])
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.strip() == expected
        assert not list(work.glob("mlflow.db")), "no run was opened"
    finally:
        if (base / "home").exists():
            (base / "home").chmod(0o755)
        shutil.rmtree(base)


@pytest.mark.parametrize("damage", ["not a database", "truncated"])
def test_a_damaged_mlflow_db_is_one_line_naming_the_file(image_folder: Path, tmp_path: Path, damage: str) -> None:
    import sqlite3

    db = (tmp_path / "mlflow.db").resolve()
    if damage == "not a database":
        db.write_bytes(np.random.default_rng(0).bytes(4096))
        problem = "is not an SQLite database (damaged or another file)"
    else:
        with sqlite3.connect(db) as conn:
            conn.execute("create table t (x)")
            conn.executemany("insert into t values (?)", [("x" * 100,)] * 2000)
        db.write_bytes(db.read_bytes()[:1000])
        problem = "cannot be read (database disk image is malformed)"
    for args in (
        ["run", "--data", str(image_folder), "--workdir", str(tmp_path)],
        ["report", "0123abcd", "--workdir", str(tmp_path)],
    ):
        code, output, _ = _invoke(args)
        assert code == 2
        assert output == (
            f"error: the MLflow store {db} {problem}; move it aside (mv {db} {db}.bad) to start an empty store "
            "there, or restore it from a backup"
        )


def test_class_names_mlflow_refuses_log_under_legal_keys(fault_store: str) -> None:
    """Folder names that are fine on disk but not as MLflow keys: `cat's`, `naïve`, and a
    255-character name (over MLflow's 250-character keys once prefixed) all log."""
    from auditflow.core.tracking import Tracker, class_keys

    names = ["cat's", "a+b", "naïve", "x" * 255, "y" * 255, "plain-name.v2"]
    keys = [f"fairness/false_positive_rate/class/{k}" for k in class_keys(names)]
    assert keys[:3] == [f"fairness/false_positive_rate/class/{k}" for k in ("cat_s", "a_b", "na_ve")]
    assert keys[5] == "fairness/false_positive_rate/class/plain-name.v2"
    assert re.fullmatch(r"fairness/false_positive_rate/class/x{73}-[0-9a-f]{6}", keys[3]) and keys[3] != keys[4]
    tracker = Tracker(fault_store)
    run = tracker.start_run(tracker.experiment_id("names"), "names", {})
    run.log_metrics(dict.fromkeys(keys, 1.0), step=1)
    assert set(tracker.client.get_run(run.run_id).data.metrics) == set(keys)


def test_class_names_that_share_a_metric_key_fail_before_training(
    fault_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`a+b` and `a_b` would write to one key, mixing two classes' metrics: the run stops
    before training (it used to finish with one class's figures silently overwritten)."""
    from auditflow.core.config import PipelineConfig
    from auditflow.core.errors import DataError
    from auditflow.core.tracking import Tracker, open_pipeline_run
    from auditflow.tasks.ingest import ingest_data

    root = make_image_folder(tmp_path / "data", n_train=4, n_test=2)
    for split in ("train", "test"):
        (root / split / "circle").rename(root / split / "a+b")
        (root / split / "square").rename(root / split / "a_b")
    ref = open_pipeline_run(PipelineConfig(tracking={"tracking_uri": fault_store}), tmp_path, "names", tags={})
    _no_training(monkeypatch)
    with pytest.raises(
        DataError,
        match=r"^class folders 'a\+b' and 'a_b' would log under the same MLflow key 'a_b' \(keys keep letters, "
        r"digits and _-\. and space; other characters become _\): rename one of them$",
    ):
        ingest_data.fn(ref, str(root), DataConfig(), str(tmp_path))  # at ingest, before any training
    assert Tracker(ref.uri).load_run(ref.run_id).stage_status["ingest"] == "FAILED"


# ---------------------------------------------------------------- a tracking outage during training
TRAIN = {"width": 8, "epochs": 3, "batch_size": 16, "lr": 0.05, "precision": "fp32", "device": "cpu"}
OUTAGE = "API request to http://tracking.invalid/api/2.0/mlflow/runs/log-batch failed with exception ConnectionError"


@pytest.fixture
def train_stage(fault_store: str, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A pipeline run after its ingest stage (its own work folder), with retries that do not wait."""
    import auditflow.core.tracking as tracking
    from auditflow.core.config import PipelineConfig
    from auditflow.tasks.ingest import ingest_data

    monkeypatch.setattr(tracking, "RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    data_cfg = DataConfig(val_fraction=0.125)
    cfg = PipelineConfig(tracking={"tracking_uri": fault_store})
    ref = tracking.open_pipeline_run(cfg, tmp_path, "faults", tags={})
    snap = ingest_data.fn(ref, str(image_folder), data_cfg, str(tmp_path))
    return ref, snap.snapshot, data_cfg, str(tmp_path)


def test_only_an_outage_retries_the_train_stage_and_user_errors_never_retry() -> None:
    from auditflow.core.errors import ModelError, TrackingError, TrackingOutageError
    from auditflow.tasks.run import retry_on_outage, retry_unless_user_error

    class Failed:  # a Prefect state whose result raises, as a failed task's does
        def __init__(self, err: BaseException) -> None:
            self.err = err

        def result(self) -> None:
            raise self.err

    outage, user, bug = TrackingOutageError("down"), ModelError("bad"), RuntimeError("bug")
    assert [retry_on_outage(None, None, Failed(e)) for e in (outage, user, bug)] == [True, False, False]
    assert [retry_unless_user_error(None, None, Failed(e)) for e in (outage, user, TrackingError("x"), bug)] == [
        True,
        False,
        False,
        True,
    ]


def _flaky_epoch_logging(monkeypatch: pytest.MonkeyPatch, fail: Callable[[int, int], bool]) -> None:
    """MLflow's `log_batch` raises, as its REST client does when the server is down, for the
    per-epoch metrics of step s on its n-th try whenever `fail(s, n)`."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    real, tries = MlflowClient.log_batch, collections.Counter()

    def log_batch(self, run_id, *args, **kwargs):
        metrics = kwargs.get("metrics") or []
        if any(m.key == "train/epoch_s" and m.step > 0 for m in metrics):
            step = metrics[0].step
            tries[step] += 1
            if fail(step, tries[step]):
                raise MlflowException(OUTAGE, error_code=TEMPORARILY_UNAVAILABLE)
        return real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import auditflow.models.training.fit as training

    def trained(*args, **kwargs):
        raise AssertionError("an epoch was trained again")

    monkeypatch.setattr(training, "train_one_epoch", trained)


def _train_steps(ref, stage_run: str) -> list[int]:
    from auditflow.core.tracking import Tracker

    history = Tracker(ref.uri).client.get_metric_history(stage_run, "train/val_accuracy")
    return sorted(m.step for m in history)


def test_a_tracking_outage_mid_training_neither_stops_it_nor_drops_an_epoch(
    train_stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from auditflow.core.config import TrainConfig
    from auditflow.core.tracking import Tracker
    from auditflow.tasks.train import train_model

    ref, snapshot, data_cfg, workdir = train_stage
    _flaky_epoch_logging(monkeypatch, lambda step, n: step >= 2 and n == 1)  # epochs 2 and 3: first try fails
    train_model.fn(ref, snapshot, data_cfg=data_cfg, cfg=TrainConfig(**TRAIN), workdir=workdir)
    record = Tracker(ref.uri).load_run(ref.run_id)
    assert record.stage_status["train"] == "FINISHED" and record.summaries["train"]["resumed_from_epoch"] == 0
    assert _train_steps(ref, record.stage_run_ids["train"]) == [1, 2, 3]  # each once, none lost


def test_a_lasting_tracking_outage_fails_the_stage_after_training_and_the_rerun_does_not_train(
    train_stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from auditflow.core.config import TrainConfig
    from auditflow.core.errors import TrackingOutageError
    from auditflow.core.tracking import Tracker
    from auditflow.tasks.train import train_model

    ref, snapshot, data_cfg, workdir = train_stage
    cfg = TrainConfig(**TRAIN)
    with monkeypatch.context() as outage:
        _flaky_epoch_logging(outage, lambda step, n: True)
        with pytest.raises(
            TrackingOutageError,
            match=rf"^stage train: the MLflow store at {re.escape(ref.uri)} refused the metrics of epochs 1-3 4 times "
            rf"\({re.escape(OUTAGE)}\); the trained model is kept: rerun the same command to log it without "
            r"training again$",
        ):
            train_model.fn(ref, snapshot, data_cfg=data_cfg, cfg=cfg, workdir=workdir)
    tracker = Tracker(ref.uri)
    failed = tracker.load_run(ref.run_id)
    assert failed.stage_status["train"] == "FAILED" and _train_steps(ref, failed.stage_run_ids["train"]) == []
    _no_training(monkeypatch)  # the retry (or rerun) must reuse the finished training
    train_model.fn(ref, snapshot, data_cfg=data_cfg, cfg=cfg, workdir=workdir)
    record = tracker.load_run(ref.run_id)
    assert record.stage_status["train"] == "FINISHED"
    assert record.summaries["train"]["resumed_from_epoch"] == 3
    assert record.summaries["train"]["reused_from_run"] == failed.stage_run_ids["train"]
    assert _train_steps(ref, record.stage_run_ids["train"]) == [1, 2, 3]


def test_a_rerun_after_a_kill_past_training_reuses_the_finished_training(
    train_stage, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """Killed mid-audit (after the train stage finished): the rerun's train stage takes the
    kept training of the same data and config, checked against its weights digest."""
    from auditflow.core.config import TrainConfig
    from auditflow.core.paths import trained_dir
    from auditflow.core.tracking import Tracker
    from auditflow.models.training.stage import resume_key
    from auditflow.tasks.train import train_model

    ref, snapshot, data_cfg, workdir = train_stage
    cfg = TrainConfig(**TRAIN)
    tracker = Tracker(ref.uri)
    train_model.fn(ref, snapshot, data_cfg=data_cfg, cfg=cfg, workdir=workdir)
    first = tracker.load_run(ref.run_id)
    with monkeypatch.context() as patch:
        _no_training(patch)
        train_model.fn(ref, snapshot, data_cfg=data_cfg, cfg=cfg, workdir=workdir)
    again = tracker.load_run(ref.run_id)
    assert again.stage_run_ids["train"] != first.stage_run_ids["train"]
    assert again.stage_tags["train"]["train/reused_from_run"] == first.stage_run_ids["train"]
    digest = first.stage_tags["train"]["auditflow.weights_sha256"]
    assert again.stage_tags["train"]["auditflow.weights_sha256"] == digest
    assert (
        again.stage_metrics["train"]["train/final_val_accuracy"]
        == first.stage_metrics["train"]["train/final_val_accuracy"]
    )
    # a kept training whose weights are not the ones recorded is not trusted: trained again
    from auditflow.core.data import Snapshot

    result = trained_dir(workdir, resume_key(Snapshot.open(snapshot).digest, data_cfg, cfg)) / "result.json"
    result.write_text(json.dumps({**json.loads(result.read_text()), "weights_sha256": "0" * 64}))
    train_model.fn(ref, snapshot, data_cfg=data_cfg, cfg=cfg, workdir=workdir)
    third = tracker.load_run(ref.run_id)
    assert "does not hold the weights it recorded (sha256 " + "0" * 64 in caplog.text
    assert third.summaries["train"]["resumed_from_epoch"] == 0 and third.summaries["train"]["reused_from_run"] is None


# ---------------------------------------------------------------- interrupts and crashes, end to end
# `auditflow run` in its own session, as a terminal starts it, on the tiny data: stopped by
# Ctrl-C, by the death of its temporary Prefect server and by SIGKILL, each once training has
# written a checkpoint, then run to the end. Each run resumes where the one before stopped.
EPOCHS = 30
RUN = [
    *(o for o in TINY if not o.startswith("train.epochs")),
    f"train.epochs={EPOCHS}",
    "train.time_budget_s=null",
    "privacy.references=0",
    "privacy.attacks=[loss]",
]
LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3} \| |\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )")  # Prefect's, MLflow's
PROMPT_S = 60  # Ctrl-C used to take 146 s and end in a ConnectError traceback


@dataclass
class Stopped:
    """One `auditflow run` and how it ended."""

    workdir: Path
    pid: int
    returncode: int
    stderr: str
    seconds_to_exit: float  # after the fault was injected
    runs: dict[str, tuple[str, dict[str, str]]]  # MLflow run id -> (status, tags), read right after


def _cli(data: Path, workdir: Path, log: Path) -> subprocess.Popen:
    args = [str(Path(sys.executable).with_name("auditflow")), "run", "--data", str(data), "--workdir", str(workdir)]
    for override in RUN:
        args += ["--set", override]
    with open(log, "w") as err:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def _training(proc: subprocess.Popen, workdir: Path) -> None:
    """Wait until this run has written a training checkpoint of its own."""
    pattern = "auditflow-cache/checkpoints/*/last.pt"
    before = {p: p.stat().st_mtime_ns for p in workdir.glob(pattern)}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before training"
        for path in workdir.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                if before.get(path) != path.stat().st_mtime_ns:
                    return
        time.sleep(0.05)
    raise AssertionError("no checkpoint within 600 s")


def _runs(workdir: Path) -> dict[str, tuple[str, dict[str, str]]]:
    from auditflow.core.tracking import Tracker

    client = Tracker(f"sqlite:///{workdir.resolve()}/mlflow.db").client
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {r.info.run_id: (r.info.status, dict(r.data.tags)) for r in found}


def _stop(data: Path, workdir: Path, name: str, fault: Callable[[subprocess.Popen], None] | None) -> Stopped:
    log = workdir.parent / f"{name}.stderr"
    proc = _cli(data, workdir, log)
    try:
        if fault is not None:
            _training(proc, workdir)
            fault(proc)
        start = time.monotonic()
        proc.wait(timeout=900)
        seconds = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return Stopped(workdir, proc.pid, proc.returncode, log.read_text(), seconds, _runs(workdir))


def _kill_prefect_server(proc: subprocess.Popen) -> None:
    found = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "prefect.server.api.server"], capture_output=True)
    pids = found.stdout.split()
    assert len(pids) == 1, found
    os.kill(int(pids[0]), signal.SIGKILL)


@pytest.fixture(scope="module")
def stopped_runs(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stopped]:
    workdir = tmp_path_factory.mktemp("stopped") / "work"
    return {
        "sigint": _stop(image_folder, workdir, "sigint", lambda p: os.killpg(p.pid, signal.SIGINT)),  # Ctrl-C
        "server": _stop(image_folder, workdir, "server", _kill_prefect_server),
        "sigkill": _stop(image_folder, workdir, "sigkill", lambda p: os.killpg(p.pid, signal.SIGKILL)),
        "rerun": _stop(image_folder, workdir, "rerun", None),
    }


def _said(stderr: str) -> list[str]:
    """What the CLI itself printed: the terminal lines that are not log records."""
    return [line for line in stderr.splitlines() if line.startswith(("error:", "interrupted"))]


def _own(stopped: Stopped) -> dict[str, tuple[str, dict[str, str]]]:
    return {k: v for k, v in stopped.runs.items() if v[1].get("auditflow.pid") == str(stopped.pid)}


@pytest.mark.slow
def test_ctrl_c_stops_promptly_in_one_line_and_ends_its_runs_killed(stopped_runs) -> None:
    run = stopped_runs["sigint"]
    assert run.returncode == 130 and run.seconds_to_exit < PROMPT_S
    assert "Traceback" not in run.stderr and "ConnectError" not in run.stderr
    [line] = _said(run.stderr)
    assert re.fullmatch(
        r"interrupted \(SIGINT\): the run stopped and its MLflow runs end KILLED; rerun the same command to resume: "
        r"finished stages are reused and unfinished training goes on from its last finished epoch "
        r"\(log: .*/auditflow-cache/logs/run-[\d-]+\.log\)",
        line,
    )
    own = _own(run)
    assert {tags.get("auditflow.stage", "parent"): status for status, tags in own.values()} == {
        "parent": "KILLED",
        "ingest": "FINISHED",
        "train": "KILLED",
    }


@pytest.mark.slow
def test_a_dead_prefect_server_stops_the_run_at_once_in_one_line(stopped_runs) -> None:
    run = stopped_runs["server"]
    assert run.returncode == 2 and run.seconds_to_exit < FAIL_FAST_S  # was ~6 min of retries
    assert "Traceback" not in run.stderr
    [line] = _said(run.stderr)
    assert re.fullmatch(
        r"error: the temporary Prefect API server \(pid \d+\) exited with code -9 mid-run; the run stopped \(its "
        r"MLflow runs are marked FAILED\): rerun the same command to resume \(log: .*\.log\)",
        line,
    )
    ended = [(status, tags) for status, tags in _own(run).values() if tags.get("auditflow.stage") != "ingest"]
    assert len(ended) == 2 and all(status == "FAILED" for status, _ in ended)
    assert all("exited with code -9 mid-run" in tags["auditflow.end_reason"] for _, tags in ended)
    assert "resuming from" in run.stderr  # from the checkpoint the Ctrl-C'd run left


@pytest.mark.slow
def test_a_sigkilled_run_is_ended_at_the_next_start_which_resumes_its_training(stopped_runs) -> None:
    killed, rerun = stopped_runs["sigkill"], stopped_runs["rerun"]
    assert killed.returncode == -signal.SIGKILL
    left = {k for k, (status, _) in _own(killed).items() if status == "RUNNING"}
    assert len(left) == 2  # the parent and its train stage: nothing could end them
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not [k for k, (status, _) in rerun.runs.items() if status == "RUNNING"]
    for run_id in left:
        status, tags = rerun.runs[run_id]
        assert status == "KILLED"
        assert tags["auditflow.end_reason"].startswith(
            f"process {killed.pid} on {tags['auditflow.host']} ended without closing this run (killed: SIGKILL"
        )
    # the rerun trained only the epochs no run had finished, and logged the whole curve
    from auditflow.core.tracking import Tracker

    parent = next(k for k, (_, tags) in _own(rerun).items() if "mlflow.parentRunId" not in tags)
    record = Tracker(f"sqlite:///{rerun.workdir.resolve()}/mlflow.db").load_run(parent)
    resumed = record.summaries["train"]["resumed_from_epoch"]
    assert 3 <= resumed < EPOCHS  # one epoch or more by each of the three runs before
    trained = [int(n) for n in re.findall(rf"epoch (\d+)/{EPOCHS} ", rerun.stderr)]
    assert trained == list(range(resumed + 1, EPOCHS + 1))
    assert [step for step, _ in record.history["val_accuracy"]] == list(range(1, EPOCHS + 1))


TINY_SETS = [arg for override in TINY for arg in ("--set", override)]
FULL_DISK = """
import errno
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
def full(*args, **kwargs):  # the artifact store's disk is full: writing there fails as the OS says
    raise OSError(errno.ENOSPC, "No space left on device")
LocalArtifactRepository.log_artifact = full
from auditflow.cli import app
app()
"""


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_where_and_no_run_is_left_running(tmp_path: Path, prefect_api_url: str) -> None:
    """Issue 18: `OSError: [Errno 28] No space left on device` came in a traceback box from
    shutil, naming no path and with no `error:` line (the store stayed consistent)."""
    data = make_image_folder(tmp_path / "data", n_train=8, n_test=2)
    work = tmp_path / "work"
    env = user_env(PREFECT_API_URL=prefect_api_url)
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, "run", "--data", str(data), "--workdir", str(work), *TINY_SETS],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "╭" not in done.stderr
    [line] = _said(done.stderr)
    assert re.fullmatch(
        rf"error: no space left on the device under --workdir '{re.escape(str(work))}' \(No space left on device\); "
        r"free space there or use a --workdir on another disk, then rerun the same command: what was written is "
        r"consistent and finished work is reused \(log: .*\.log\)",
        line,
    ), line
    assert "RUNNING" not in {status for status, _ in _runs(work).values()}


@pytest.mark.slow
def test_a_batch_larger_than_the_split_stops_the_run_in_one_line(tmp_path: Path, prefect_api_url: str) -> None:
    data = make_image_folder(tmp_path / "data", n_train=8, n_test=2)
    sets = [a for o in [*TINY, "train.batch_size=100000"] for a in ("--set", o)]
    env = user_env(PREFECT_API_URL=prefect_api_url)
    cli = str(Path(sys.executable).with_name("auditflow"))
    work = tmp_path / "work"
    done = subprocess.run(
        [cli, "run", "--data", str(data), "--workdir", str(work), *sets], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "╭" not in done.stderr
    [line] = _said(done.stderr)
    assert line.startswith("error: train.batch_size=100000 is larger than the training split (21 images)"), line
    runs = _runs(work)
    stages = {tags.get("auditflow.stage", "parent"): status for status, tags in runs.values()}
    assert stages == {"parent": "FAILED", "ingest": "FINISHED", "train": "FAILED"}
    # a user error inside the flow: the full trace in the log and in MLflow, one line in the terminal
    log = re.fullmatch(r".*\(log: (.*\.log)\)", line)
    assert log and "Traceback" in Path(log.group(1)).read_text()
    from auditflow.core.tracking import Tracker

    parent = next(k for k, (_, tags) in runs.items() if "mlflow.parentRunId" not in tags)
    client = Tracker(f"sqlite:///{work.resolve()}/mlflow.db").client
    assert "Traceback" in Path(client.download_artifacts(parent, "error.txt", str(tmp_path))).read_text()


@pytest.mark.slow
def test_a_broken_image_is_named_in_one_line_before_any_server_starts(tmp_path: Path) -> None:
    """`auditflow run` reads the data before the temporary Prefect API starts: a broken image is
    one line (the trace in the log), in seconds, and no MLflow run is opened for it."""
    data = make_image_folder(tmp_path / "data", n_train=2, n_test=2)
    (data / "test" / "circle" / "0001.png").write_bytes(b"\x89PNG broken")
    run = _stop(data, tmp_path / "work", "user-error", None)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and "╭" not in run.stderr  # was 75 to 400 lines of them
    [line] = _said(run.stderr)
    match = re.fullmatch(r"error: cannot decode image test/circle/0001\.png: .* \(log: (.*\.log)\)", line)
    assert match, line
    assert "Traceback" in Path(match.group(1)).read_text()  # the full trace, kept
    assert "Starting temporary server" not in run.stderr and run.runs == {}
    assert run.seconds_to_exit < 120  # 46 s of CPU before, with the server and the store started


def test_a_damaged_kept_training_is_named_and_trained_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 18: a damaged `trained/` checkpoint's warning named the `checkpoints/` copy."""
    from auditflow.models.training.stage import RESULT, reuse_finished

    finished = tmp_path / "trained" / "key"
    finished.mkdir(parents=True)
    (finished / "last.pt").write_bytes(b"not a checkpoint")
    (finished / RESULT).write_text(json.dumps({"weights_sha256": "0" * 64, "train_run": "r"}))
    work = tmp_path / "checkpoints" / "key"
    work.mkdir(parents=True)
    with caplog.at_level("WARNING", logger="auditflow"):
        assert reuse_finished(finished, work) is None
    assert f"discarding the kept training {finished} and training again: cannot read checkpoint" in caplog.text
    assert str(work) not in caplog.text
    assert not finished.exists() and not (work / "last.pt").exists()
