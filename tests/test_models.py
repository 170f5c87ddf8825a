from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import at_least
from torch import nn

from auditflow.core.config import DataConfig, TrainConfig
from auditflow.core.data import ingest, make_splits
from auditflow.core.errors import ConfigError, ModelError
from auditflow.models.evaluation.inference import predict
from auditflow.models.training.checkpoints import load_model
from auditflow.models.training.fit import fit
from auditflow.models.training.presets import augment, to_input
from auditflow.models.training.registry import FastNet, TutorialNet, build_model, identity_init
from auditflow.models.training.runtime import resolve_runtime

CPU = resolve_runtime("cpu", "fp32")


@pytest.fixture(scope="module")
def splits(image_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    snap = ingest(str(image_folder), DataConfig(), tmp_path_factory.mktemp("cache"))
    return make_splits(snap, DataConfig(val_fraction=0.25))


def tiny(**kw) -> TrainConfig:
    base = dict(model="fastnet", width=8, epochs=3, batch_size=12, lr=0.05, precision="fp32", device="cpu")
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize("name", ["tutorial_net", "fastnet", "resnet18"])
def test_every_model_maps_images_to_logits(name: str) -> None:
    model = build_model(name, num_classes=7, width=8).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_tutorial_net_is_the_tutorial() -> None:
    net = TutorialNet()
    shapes = [(n, tuple(p.shape)) for n, p in net.named_parameters()]
    assert shapes == [
        ("conv1.weight", (6, 3, 5, 5)),
        ("conv1.bias", (6,)),
        ("conv2.weight", (16, 6, 5, 5)),
        ("conv2.bias", (16,)),
        ("fc1.weight", (120, 400)),
        ("fc1.bias", (120,)),
        ("fc2.weight", (84, 120)),
        ("fc2.bias", (84,)),
        ("fc3.weight", (10, 84)),
        ("fc3.bias", (10,)),
    ]
    assert sum(p.numel() for p in net.parameters()) == 62006  # the tutorial's count


def test_unknown_model_is_named() -> None:
    with pytest.raises(
        ModelError, match=r"^unknown model 'vgg'; choose one of \['fastnet', 'resnet18', 'tutorial_net'\]$"
    ):
        build_model("vgg", 10)


def test_cuda_requested_without_gpu_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match=r"train\.device='cuda' but no CUDA device is available"):
        resolve_runtime("cuda")


def test_whitening_stem_whitens_patches() -> None:
    net = FastNet(width=8)
    images = torch.rand(64, 3, 16, 16) * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
    net.fit_whitening(images, eps=0.0)
    out = net.whiten(images)[:, :12]  # first 12 maps = the whitened directions (bias is 0)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = torch.cov(flat.T)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=0.05)


def test_identity_init_passes_each_groups_input_through() -> None:
    """train.identity_init (airbench's dirac init): a group's first conv maps its input to its
    first in_channels outputs unchanged, its second conv is a whole identity, and the filters
    beyond the input's channels keep their random start."""
    torch.manual_seed(0)
    net = FastNet(width=32)
    identity_init(net)
    second = net.groups[1]  # 32 -> 64 channels
    x = torch.randn(2, 32, 8, 8)
    assert torch.allclose(second.conv1(x)[:, :32], x, atol=1e-6)
    y = torch.randn(2, 64, 4, 4)
    assert torch.allclose(second.conv2(y), y, atol=1e-6)
    assert second.conv1.weight[32:].abs().sum() > 0  # the other 32 filters: random, as before
    first = net.groups[0]  # 24 -> 32: the whitening stem's 24 maps pass through
    z = torch.randn(1, 24, 6, 6)
    assert torch.allclose(first.conv1(z)[:, :24], z, atol=1e-6)


def test_fit_starts_from_identities_only_when_asked(splits, tmp_path: Path) -> None:
    """fit applies identity_init before training: one step at lr ~0 leaves the group's second
    conv an identity with it and random without it."""

    def second_conv(identity: bool) -> torch.Tensor:
        cfg = tiny(epochs=1, lr=1e-12, identity_init=identity, ema_decay=None, weight_decay=0.0)
        model, _ = load_model(fit(splits, cfg, CPU, checkpoint_dir=tmp_path / str(identity)).checkpoint)
        return model[1].groups[0].conv2.weight.detach()

    eye = torch.zeros(8, 8, 3, 3)
    nn.init.dirac_(eye)
    assert torch.allclose(second_conv(True), eye, atol=1e-6)
    assert not torch.allclose(second_conv(False), eye, atol=1e-2)


def test_identity_init_is_for_fastnet_only() -> None:
    with pytest.raises(ValueError, match="identity_init=true is for model 'fastnet' only, not 'resnet18'"):
        TrainConfig(model="resnet18", identity_init=True)


def test_compile_options_ask_for_cuda_graphs_on_a_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """`train.cuda_graphs` becomes torch.compile's "reduce-overhead" on a CUDA runtime and
    nothing on a CPU, where there are no CUDA graphs, or under DDP; two training sizes compile a
    graph each."""
    from auditflow.models.training.loop import compile_options
    from auditflow.models.training.runtime import Runtime

    gpu = Runtime(device=torch.device("cuda"), autocast_dtype=torch.bfloat16, channels_last=True)
    cpu = Runtime(device=torch.device("cpu"), autocast_dtype=None, channels_last=False)
    graphs = TrainConfig(compile=True, cuda_graphs=True)
    assert compile_options(graphs, gpu, two_sizes=False) == {"mode": "reduce-overhead"}
    assert compile_options(graphs, cpu, two_sizes=True) == {"dynamic": False}
    assert compile_options(TrainConfig(compile=True), gpu, two_sizes=False) == {}
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # DDP: never measured with graphs
    assert compile_options(graphs, gpu, two_sizes=False) == {}


def test_augment_flip_and_crop() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    same = augment(x, flip=False, crop_padding=0, generator=g)
    assert torch.equal(same, x)
    out = augment(x, flip=True, crop_padding=2, generator=g)
    assert out.shape == x.shape
    # every output row comes from the reflect-padded input: values stay in the input's range per image
    for i in range(2):
        assert set(out[i].unique().tolist()) <= set(x[i].unique().tolist())


def test_to_input_layout_and_range() -> None:
    images = np.full((2, 4, 5, 3), 255, np.uint8)
    images[..., 1] = 0
    x = to_input(images)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert x[:, 0].eq(1).all() and x[:, 1].eq(0).all()


def test_fit_learns_toy_data_and_checkpoints(splits, tmp_path: Path) -> None:
    cfg = tiny(epochs=6)
    result = fit(splits, cfg, CPU, checkpoint_dir=tmp_path)
    assert len(result.history) == 6
    at_least("fit toy: final val accuracy", result.history[-1].val_accuracy, 0.9)  # three very different classes
    model, payload = load_model(result.checkpoint)
    assert payload["epoch"] == 6 and payload["config"] == cfg.model_dump(mode="json")
    acc = (predict(model, splits.test_x, CPU).argmax(1) == splits.test_y).mean()
    at_least("fit toy: test accuracy of the checkpoint", acc, 0.9)


def test_seeded_cpu_runs_are_identical(splits, tmp_path: Path) -> None:
    a = fit(splits, tiny(), CPU, checkpoint_dir=tmp_path / "a")
    b = fit(splits, tiny(), CPU, checkpoint_dir=tmp_path / "b")
    sa, sb = torch.load(a.checkpoint)["state_dict"], torch.load(b.checkpoint)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = fit(splits, tiny(seed=1), CPU, checkpoint_dir=tmp_path / "c")
    sc = torch.load(c.checkpoint)["state_dict"]
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_interrupted_run_resumes_to_the_same_weights(splits, tmp_path: Path) -> None:
    cfg = tiny(epochs=4, ema_decay=0.9, dropout=0.1)
    full = fit(splits, cfg, CPU, checkpoint_dir=tmp_path / "full")

    class Killed(Exception):
        pass

    def die_after_two(stats) -> None:
        if stats.epoch == 2:
            raise Killed

    # checkpoint_every=1 saves after on_epoch; die before the epoch-2 save -> resume from epoch 1
    with pytest.raises(Killed):
        fit(splits, cfg, CPU, checkpoint_dir=tmp_path / "cut", on_epoch=die_after_two)
    resumed = fit(splits, cfg, CPU, checkpoint_dir=tmp_path / "cut")
    assert resumed.resumed_from_epoch == 1
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4]
    a, b = torch.load(full.checkpoint), torch.load(resumed.checkpoint)
    for key in a["state_dict"]:
        assert torch.allclose(a["state_dict"][key].float(), b["state_dict"][key].float(), atol=1e-6), key
    for key in a["ema_state_dict"]:
        assert torch.allclose(a["ema_state_dict"][key].float(), b["ema_state_dict"][key].float(), atol=1e-6), key


def test_finished_checkpoint_with_other_config_starts_fresh(splits, tmp_path: Path) -> None:
    fit(splits, tiny(epochs=2), CPU, checkpoint_dir=tmp_path)
    again = fit(splits, tiny(epochs=3), CPU, checkpoint_dir=tmp_path)
    assert again.resumed_from_epoch == 0 and len(again.history) == 3


def _steps_on_one_batch(splits, cfg: TrainConfig, n: int) -> tuple[list[float], list[float], list[str], list[str]]:
    """`n` optimiser steps of fit's own model, optimiser and LR schedule (over `n` steps) on
    one fixed batch of 12 images, augmentation off. Returns (the loss before each step, the
    learning rate of each step, the parameters that moved, the trainable parameters)."""
    from auditflow.models.training.fit import OPTIMIZERS, _param_groups, _schedule
    from auditflow.models.training.loop import _train_step
    from auditflow.models.training.registry import prepare_from_data

    torch.manual_seed(cfg.seed)  # fit's model (`_build`, less its FLOP count, which takes seconds)
    model = build_model(cfg.model, len(splits.classes), width=cfg.width)
    prepare_from_data(model, to_input(splits.train_x))
    optimizer = OPTIMIZERS[cfg.optimizer](_param_groups(model, cfg.weight_decay), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, total_steps=n))
    idx = torch.as_tensor(np.linspace(0, len(splits.train_y) - 1, 12).round().astype(np.int64))  # every class
    x, y = torch.as_tensor(np.asarray(splits.train_x))[idx], torch.as_tensor(splits.train_y)[idx]
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    losses, lrs = [], []
    for _ in range(n):
        lrs.append(optimizer.param_groups[0]["lr"])
        loss, _ = _train_step(model, x, y, optimizer, cfg, CPU)
        scheduler.step()
        losses.append(loss.item())
    lrs.append(optimizer.param_groups[0]["lr"])  # after the last step: where the schedule ends
    moved = [k for k, p in model.named_parameters() if not torch.equal(p, before[k])]
    return losses, lrs, moved, [k for k, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.05), ("adam", 0.003), ("adamw", 0.003), ("rmsprop", 0.003)])
def test_each_optimizer_lowers_the_loss_on_a_fixed_batch(splits, optimizer: str, lr: float) -> None:
    cfg = tiny(optimizer=optimizer, lr=lr, schedule="constant", label_smoothing=0.1, flip=False, crop_padding=0)
    losses, lrs, moved, trainable = _steps_on_one_batch(splits, cfg, 6)
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
    assert moved == trainable  # every trainable tensor took the steps
    assert lrs == [lr] * 7


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_each_schedule_sets_the_learning_rate_of_every_step_and_lowers_the_loss(splits, schedule: str) -> None:
    """10 steps, 2 of warm-up: the optimiser's learning rate at each step is lr x the
    schedule's multiplier; constant stays, cosine and onecycle rise to lr at the end of the
    warm-up, then fall to 0 at the last step."""
    from auditflow.models.training.fit import _schedule

    cfg = tiny(schedule=schedule, warmup_fraction=0.2, lr=0.05, flip=False, crop_padding=0)
    losses, lrs, moved, trainable = _steps_on_one_batch(splits, cfg, 10)
    shape = _schedule(cfg, total_steps=10)
    assert lrs == pytest.approx([0.05 * shape(step) for step in range(11)])
    assert losses[-1] < 0.9 * losses[0], losses
    assert moved == trainable
    if schedule == "constant":
        assert lrs == [0.05] * 11
        return
    peaks = [step for step, lr in enumerate(lrs) if lr == pytest.approx(0.05)]
    assert peaks and set(peaks) <= {1, 2}  # the end of the 2-step warm-up
    assert all(a < b for a, b in itertools.pairwise(lrs[: peaks[0] + 1]))  # rises
    assert all(a > b for a, b in itertools.pairwise(lrs[peaks[-1] :]))  # then falls
    assert lrs[-1] == 0.0


def test_bf16_autocast_on_cpu_runs(splits, tmp_path: Path) -> None:
    rt = resolve_runtime("cpu", "bf16")
    assert rt.autocast_dtype == torch.bfloat16
    result = fit(splits, tiny(epochs=1, precision="bf16"), rt, checkpoint_dir=tmp_path)
    assert np.isfinite(result.history[0].train_loss)


def test_bad_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(ModelError, match=r"cannot read checkpoint .*x\.pt"):
        load_model(path)


def test_tta_averages_flipped_logits() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    images = np.random.default_rng(0).integers(0, 255, (3, 4, 4, 3), dtype=np.uint8)
    plain = predict(model, images, CPU)
    flipped = predict(model, images[:, :, ::-1].copy(), CPU)
    assert np.allclose(predict(model, images, CPU, tta=True), (plain + flipped) / 2, atol=1e-5)


@pytest.mark.gpu
def test_cuda_runtime_uses_bf16_and_trains(splits, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    rt = resolve_runtime("auto")
    assert rt.device.type == "cuda" and rt.autocast_dtype == torch.bfloat16 and rt.channels_last
    result = fit(splits, tiny(epochs=2, device="cuda", precision="auto"), rt, checkpoint_dir=tmp_path)
    assert result.history[-1].val_accuracy > 0.5


def test_distillation_loss_is_zero_only_when_matching_the_teacher() -> None:
    from auditflow.models.training.transfer import distillation_loss

    logits = torch.randn(5, 4)
    assert distillation_loss(logits, logits, 4.0).abs().item() < 1e-6
    assert distillation_loss(logits, logits.flip(1), 4.0).item() > 0.01


def test_fit_with_teacher_and_init_state(splits, tmp_path: Path) -> None:
    teacher_run = fit(splits, tiny(epochs=4), CPU, checkpoint_dir=tmp_path / "teacher")
    teacher, _ = load_model(teacher_run.checkpoint)
    # alpha=1: the labels play no part, so whatever the student learns comes from the teacher
    student_run = fit(
        splits, tiny(epochs=4, distill_alpha=1.0), CPU, checkpoint_dir=tmp_path / "student", teacher=teacher
    )
    student, _ = load_model(student_run.checkpoint)
    agree = (predict(student, splits.test_x, CPU).argmax(1) == predict(teacher, splits.test_x, CPU).argmax(1)).mean()
    at_least("distillation toy: student-teacher agreement", agree, 0.8)
    tuned = fit(splits, tiny(epochs=1), CPU, checkpoint_dir=tmp_path / "tuned", init_state=teacher.state_dict())
    at_least("init_state toy: first-epoch val accuracy", tuned.history[0].val_accuracy, 0.9)  # a trained start


def test_load_matching_keeps_the_new_classifier_fresh() -> None:
    from auditflow.models.training.transfer import load_matching

    source = build_model("fastnet", 10, width=8).state_dict()
    target = build_model("fastnet", 3, width=8)
    fresh = load_matching(target, source)
    assert fresh == ["1.head.weight"]
    assert torch.equal(target.state_dict()["1.groups.0.conv1.weight"], source["1.groups.0.conv1.weight"])


def test_flop_count_of_the_tutorial_net() -> None:
    from auditflow.models.training.speed import train_flops_per_image

    # forward multiply-adds of the tutorial Net: conv1 28*28*6*75, conv2 10*10*16*150, fc 400*120+120*84+84*10
    conv1 = 28 * 28 * 6 * 75
    macs = conv1 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    flops = train_flops_per_image(build_model("tutorial_net", 10), (32, 32, 3), 10)
    # forward 2*macs; backward 2*macs for weight grads + 2*macs for input grads, except that
    # the first layer needs no gradient for the image itself
    assert flops == 2 * macs + 2 * macs + 2 * (macs - conv1)


def test_translate_tta_weights_shifted_views() -> None:
    import torch.nn.functional as F

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 2))
    images = np.random.default_rng(1).integers(0, 255, (2, 6, 6, 3), dtype=np.uint8)
    x = to_input(images)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, padded[..., :6, :6], padded[..., 2:8, 2:8]]
    with torch.no_grad():
        flip_avg = [0.5 * (model(v) + model(v.flip(3))) for v in views]
    expected = 0.5 * flip_avg[0] + 0.25 * flip_avg[1] + 0.25 * flip_avg[2]
    assert np.allclose(predict(model, images, CPU, tta=True, translate=1), expected.numpy(), atol=1e-5)


def test_compile_failure_falls_back_to_eager(splits, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from auditflow.models.training.fit import OPTIMIZERS, _param_groups, warm_up

    def broken(model):
        def call(*args, **kwargs):
            raise RuntimeError("no C compiler")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    base = build_model("fastnet", 3, width=8)
    cfg = tiny(compile=True)
    optimizer = OPTIMIZERS[cfg.optimizer](_param_groups(base, cfg.weight_decay), cfg)
    x, y = torch.as_tensor(np.asarray(splits.train_x)), torch.as_tensor(splits.train_y)
    model, _, step, _ = warm_up(base, base, optimizer, images=x, labels=y, cfg=cfg, runtime=CPU)
    assert model is base and step != step  # nan: nothing timed without a budget
    assert "torch.compile failed (RuntimeError: no C compiler); training eagerly" in caplog.text


def test_a_second_run_of_the_same_config_waits_for_the_first_then_goes_on(tmp_path: Path, caplog) -> None:
    """Two runs of the same data and config never train into the same checkpoints at once: the
    second waits, saying who holds them, and enters once the first has left."""
    import threading
    import time

    from auditflow.models.training.stage import exclusive

    entered, left = threading.Event(), []

    def first() -> None:
        with exclusive(tmp_path / "w"):
            entered.set()
            time.sleep(0.5)
            left.append(time.monotonic())

    thread = threading.Thread(target=first)
    thread.start()
    entered.wait(5)
    with caplog.at_level(logging.INFO, logger="auditflow"), exclusive(tmp_path / "w", poll_s=0.02):
        assert left, "entered while the first run still held the lock"
        assert time.monotonic() >= left[0]
    thread.join()
    said = caplog.text
    assert f"the run of process {os.getpid()} on " in said and "waiting for it to end" in said
    with exclusive(tmp_path / "w"):  # released
        pass


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # 100 steps, 20 of warm-up: onecycle rises linearly from 0.1 to 1, then falls to 0
        ("onecycle", {0: 0.1, 10: 0.55, 20: 1.0, 60: 0.5, 100: 0.0}),
        # cosine: linear warm-up to 1 at step 19, then half a cosine down to 0
        ("cosine", {0: 0.05, 19: 1.0, 20: 1.0, 60: 0.5, 100: 0.0}),
        ("constant", {0: 1.0, 50: 1.0, 100: 1.0}),
    ],
)
def test_lr_schedule_values(schedule: str, expected: dict[int, float]) -> None:
    from auditflow.models.training.fit import _schedule

    f = _schedule(tiny(schedule=schedule, warmup_fraction=0.2), total_steps=100)
    assert {step: f(step) for step in expected} == pytest.approx(expected)


def test_random_crops_are_windows_of_the_padded_image_at_every_offset() -> None:
    from auditflow.models.training.presets import augment

    n, p, h = 400, 2, 6
    # every pixel holds its own coordinates, so a crop reveals its offset
    grid = torch.arange(h * h, dtype=torch.float32).reshape(1, 1, h, h).repeat(n, 1, 1, 1)
    out = augment(grid, flip=False, crop_padding=p, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(grid, (p, p, p, p), mode="reflect")
    offsets = set()
    for i in range(n):
        match = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i, 0], padded[i, 0, dy : dy + h, dx : dx + h])
        ]
        assert match, f"crop {i} is not a window of the padded image"
        offsets.add(match[0])
    assert offsets == {(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)}  # all 25 reached


def test_an_epochs_draws_augment_as_per_batch_draws_would() -> None:
    """`draw_augmentation` draws one epoch's flips and crops up front (one copy to the device,
    not two or three per step): each batch is augmented exactly as `augment` drawing from the
    same seeded generator batch by batch would, so seeded runs train on the same images."""
    from auditflow.models.training.presets import augment, draw_augmentation

    images = torch.rand(30, 3, 8, 8)
    sizes = [12, 12, 6]
    starts = [0, 12, 24]
    inline = torch.Generator().manual_seed(3)
    expected = [augment(images[s : s + n], flip=True, crop_padding=2, generator=inline) for s, n in zip(starts, sizes)]
    masks, shifts = draw_augmentation(
        sizes, flip=True, crop_padding=2, generator=torch.Generator().manual_seed(3), device="cpu"
    )
    assert masks is not None and shifts is not None and masks.shape == (30,) and shifts.shape == (30, 2)
    for s, n, want in zip(starts, sizes, expected, strict=True):
        got = augment(images[s : s + n], flip=masks[s : s + n], crop_padding=2, shift=shifts[s : s + n])
        assert torch.equal(got, want)
    assert draw_augmentation(sizes, flip=False, crop_padding=0, generator=inline, device="cpu") == (None, None)


def test_flips_mirror_about_half_of_the_batch() -> None:
    from auditflow.models.training.presets import augment

    batch = torch.arange(8, dtype=torch.float32).reshape(1, 1, 1, 8).repeat(1000, 1, 1, 1)
    out = augment(batch, flip=True, crop_padding=0, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, batch[0].flip(2)) for o in out]
    kept = [torch.equal(o, batch[0]) for o in out]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and 450 < sum(flipped) < 550
