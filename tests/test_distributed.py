"""Data-parallel training: two CPU processes under torchrun on the gloo backend."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import at_least

from auditflow.core.config import DataConfig, TrainConfig
from auditflow.core.data import ingest
from auditflow.models.training.checkpoints import load_model
from auditflow.models.training.distributed import Job, launch, torchrun_command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spec(snapshot: Path, checkpoints: Path) -> dict:
    cfg = TrainConfig(
        model="fastnet", width=8, epochs=3, batch_size=8, lr=0.05, precision="fp32", device="cpu", world_size=2
    )
    return {
        "snapshot": str(snapshot),
        "data": DataConfig(val_fraction=0.25).model_dump(mode="json"),
        "train": cfg.model_dump(mode="json"),
        "checkpoint_dir": str(checkpoints),
    }


@pytest.mark.slow
def test_two_gloo_processes_train_in_sync_on_one_node_or_on_two(image_folder: Path, tmp_path: Path) -> None:
    """Two processes on one node (--standalone), then the same job as two nodes of one process
    each, joined by a c10d rendezvous on loopback: node 0 is `launch`, node 1 runs the command
    `launch` logs for the other nodes. Same total batch, same seed: the same weights."""
    snap = ingest(str(image_folder), DataConfig(), tmp_path / "cache")
    result, records = launch(_spec(snap.path, tmp_path / "ckpt"), Job(2), tmp_path / "ddp")
    # (launch itself refuses ranks whose final weights differ; tests/test_models.py pins that)
    assert [r["world_size"] for r in records] == [2, 2]
    assert len(result.history) == 3
    # each rank saw half of the 36 training images per epoch: 18 -> two batches of 8 (last dropped)
    at_least("ddp toy: final val accuracy", result.history[-1].val_accuracy, 0.9)
    model, payload = load_model(result.checkpoint)
    assert payload["epoch"] == 3
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3)

    job = Job(1, nodes=2, endpoint=f"127.0.0.1:{_free_port()}", timeout_s=120, rdzv_id="two-nodes")
    ddp = tmp_path / "ddp-nodes"
    node0: dict = {}
    thread = threading.Thread(
        target=lambda: node0.update(out=launch(_spec(snap.path, tmp_path / "ckpt-nodes"), job, ddp))
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not (ddp / "spec.json").is_file():
        assert time.monotonic() < deadline and thread.is_alive(), "node 0 never wrote its spec"
        time.sleep(0.1)
    node1 = subprocess.run(torchrun_command(ddp / "spec.json", job), capture_output=True, text=True, timeout=600)
    thread.join(timeout=600)
    assert node1.returncode == 0, node1.stderr[-3000:]
    two_nodes, node_records = node0["out"]
    assert [r["world_size"] for r in node_records] == [2, 2]
    one, two = model.state_dict(), load_model(two_nodes.checkpoint)[0].state_dict()
    gap = max((one[k].float() - two[k].float()).abs().max().item() for k in one)
    print(f"two nodes vs one: largest weight difference {gap:.2e}")  # NOTES.md
    assert gap <= 1e-4  # docs/deploy.md: threads per process differ, so float sums may round apart
    assert [h.val_accuracy for h in two_nodes.history] == [h.val_accuracy for h in result.history]


@pytest.mark.slow
def test_a_node_that_never_joins_fails_within_the_timeout_in_one_line(image_folder: Path, tmp_path: Path) -> None:
    from auditflow.core.errors import ModelError

    snap = ingest(str(image_folder), DataConfig(), tmp_path / "cache")
    endpoint = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(ModelError) as err:
        launch(_spec(snap.path, tmp_path / "ckpt"), Job(1, nodes=2, endpoint=endpoint, timeout_s=5), tmp_path / "ddp")
    waited = time.monotonic() - start
    assert str(err.value) == (
        f"train.nodes=2: not every node joined the rendezvous at {endpoint} within 5 s (train.rdzv_timeout_s); "
        "start the torchrun command logged above on each other node"
    )
    assert waited < 60, waited


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
        launch(spec, Job(2), tmp_path / "ddp")


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
        launch(spec, Job(2), tmp_path / "ddp")
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
        launch(spec, Job(2), tmp_path / "ddp")


def test_the_command_of_each_node_names_the_rendezvous_and_one_node_stays_standalone() -> None:
    job = Job(2, nodes=3, endpoint="10.0.0.5:29400", timeout_s=30, rdzv_id="k1")
    cmd = torchrun_command("/w/spec.json", job)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nnodes=3", "--rdzv_backend=c10d"]
    assert {"--rdzv_endpoint=10.0.0.5:29400", "--rdzv_id=k1", "--rdzv_conf=join_timeout=30"} <= set(cmd)
    assert cmd[-4:] == ["--nproc_per_node=2", "-m", "auditflow.models.training.distributed", "/w/spec.json"]
    assert job.processes == 6
    assert "--standalone" in torchrun_command("/w/spec.json", Job(2)) and Job(2).processes == 2


def test_several_nodes_need_a_rendezvous_endpoint() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="nodes=2 needs rdzv_endpoint: host:port of this machine"):
        TrainConfig(nodes=2)
    with pytest.raises(ValidationError, match="rdzv_endpoint"):
        TrainConfig(nodes=2, rdzv_endpoint="no port")
    assert TrainConfig(nodes=2, world_size=3, rdzv_endpoint="head:29400").processes == 6


def test_the_train_stage_runs_the_configured_nodes_under_its_checkpoint_key() -> None:
    from auditflow.models.training.stage import job_for

    cfg = TrainConfig(world_size=2, nodes=2, rdzv_endpoint="head:29400", rdzv_timeout_s=30)
    assert job_for(cfg, Path("/w/checkpoints/3f2a9c")) == Job(2, 2, "head:29400", 30.0, rdzv_id="3f2a9c")
