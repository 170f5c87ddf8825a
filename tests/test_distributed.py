"""Data-parallel training: two CPU processes under torchrun on the gloo backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import at_least

from auditflow.core.config import DataConfig, TrainConfig
from auditflow.core.data import ingest
from auditflow.models.training.checkpoints import load_model
from auditflow.models.training.distributed import launch


@pytest.mark.slow
def test_two_gloo_processes_train_in_sync(image_folder: Path, tmp_path: Path) -> None:
    snap = ingest(str(image_folder), DataConfig(), tmp_path / "cache")
    cfg = TrainConfig(
        model="fastnet", width=8, epochs=3, batch_size=8, lr=0.05, precision="fp32", device="cpu", world_size=2
    )
    spec = {
        "snapshot": str(snap.path),
        "data": DataConfig(val_fraction=0.25).model_dump(mode="json"),
        "train": cfg.model_dump(mode="json"),
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }
    result, records = launch(spec, 2, tmp_path / "ddp")
    # (launch itself refuses ranks whose final weights differ; tests/test_models.py pins that)
    assert [r["world_size"] for r in records] == [2, 2]
    assert len(result.history) == 3
    # each rank saw half of the 36 training images per epoch: 18 -> two batches of 8 (last dropped)
    at_least("ddp toy: final val accuracy", result.history[-1].val_accuracy, 0.9)
    model, payload = load_model(result.checkpoint)
    assert payload["epoch"] == 3
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.slow
def test_failed_launch_reports_the_error(tmp_path: Path) -> None:
    from auditflow.core.errors import ModelError

    spec = {
        "snapshot": str(tmp_path / "missing"),
        "data": DataConfig().model_dump(mode="json"),
        "train": TrainConfig(device="cpu").model_dump(mode="json"),
        "checkpoint_dir": str(tmp_path),
    }
    with pytest.raises(ModelError, match=r"distributed training \(2 processes\) failed with exit code"):
        launch(spec, 2, tmp_path / "ddp")


def test_a_failed_torchrun_is_a_model_error_with_its_last_lines(tmp_path: Path, monkeypatch) -> None:
    """The fast tier's side of the test above: torchrun's exit code and output tail, no processes."""
    import subprocess

    from auditflow.core.errors import ModelError

    def failing_torchrun(cmd, **kwargs):
        assert kwargs["env"]["OMP_NUM_THREADS"] and "--nproc_per_node=2" in cmd
        return subprocess.CompletedProcess(cmd, 1, "".join(f"line {i}\n" for i in range(40)), "boom\n")

    monkeypatch.setattr(subprocess, "run", failing_torchrun)
    spec = {"train": TrainConfig(device="cpu").model_dump(mode="json")}
    with pytest.raises(ModelError) as err:
        launch(spec, 2, tmp_path / "ddp")
    message = str(err.value)
    assert message.startswith("distributed training (2 processes) failed with exit code 1:\nline 16\n")
    assert message.endswith("line 39\nboom") and "line 15\n" not in message  # the last 25 lines


def test_ranks_that_end_with_different_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import subprocess

    from auditflow.core.errors import ModelError

    def fake_torchrun(cmd, **kwargs):  # two ranks that "trained" to different weights
        for rank, digest in enumerate(("aaa", "bbb")):
            (tmp_path / "ddp" / f"result-{rank}.json").write_text(json.dumps({"state_digest": digest}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_torchrun)
    spec = {"train": TrainConfig(device="cpu").model_dump(mode="json")}
    with pytest.raises(ModelError, match=r"data-parallel ranks ended with different weights: \['aaa', 'bbb'\]"):
        launch(spec, 2, tmp_path / "ddp")
