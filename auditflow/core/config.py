"""Typed configuration: one frozen pydantic model per stage, composed into `PipelineConfig`.

Profiles are YAML files in `auditflow/profiles/` (or any path); command-line overrides are
`section.field=value` strings whose value is parsed as YAML (`train.epochs=3`,
`benchmark.batch_sizes=[1,64]`). Every value is checked when the config is built, before any
work starts, and a bad one raises `ConfigError` naming the field.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from auditflow.core.errors import ConfigError

ModelName = Literal["tutorial_net", "fastnet", "resnet18"]
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Section):
    """How a data source becomes a snapshot and its splits."""

    image_size: int = Field(32, gt=0, le=1024, description="Expected image side, pixels (square).")
    resize: bool = Field(False, description="Resize images of another size to image_size instead of rejecting them.")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=0.5, description="Fraction of train held out for validation (stratified)."
    )
    max_train_per_class: int | None = Field(
        None, gt=0, description="Cap on train images per class (subsampling, seeded); None = all."
    )
    max_test_per_class: int | None = Field(
        None, gt=0, description="Cap on test images per class (subsampling, seeded); None = all."
    )
    seed: int = Field(0, description="Seed of the validation split and subsampling.")


class DPConfig(_Section):
    """Differentially private training (DP-SGD with Opacus): per-example gradients clipped to
    `max_grad_norm`, Gaussian noise calibrated so that the whole run is (epsilon, delta)-DP,
    Poisson-sampled batches of expected size `train.batch_size`. BatchNorm is replaced by
    GroupNorm (per-example gradients need layers that do not mix examples)."""

    epsilon: float = Field(
        8.0, gt=0.0, le=1000.0, description="Target epsilon of the whole run (lower = more private)."
    )
    delta: float | None = Field(
        None, gt=0.0, lt=1.0, description="Target delta; None = 1 / (10 x training images), below 1/N as it should be."
    )
    max_grad_norm: float = Field(1.0, gt=0.0, description="Per-example gradient clipping norm (L2).")
    accountant: Literal["rdp", "prv", "gdp"] = Field(
        "prv",
        description="Opacus privacy accountant (gdp's noise search fails for CIFAR-sized data in Opacus 1.6: "
        "use prv or rdp there).",
    )


class TrainConfig(_Section):
    """Model, optimiser and schedule."""

    model: ModelName = Field("fastnet", description="Architecture from the model registry.")
    width: int = Field(64, gt=0, description="Base channel width (fastnet, resnet18); tutorial_net ignores it.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before the classifier.")
    identity_init: bool = Field(
        False,
        description="fastnet: start each 3x3 convolution as a partial identity (its first input-many "
        "filters pass their input through; airbench's dirac init, Jordan 2024, section 3.3).",
    )
    epochs: int = Field(
        10, gt=0, le=10_000, description="Passes over the training split; with time_budget_s, the most it may run."
    )
    time_budget_s: float | None = Field(
        None,
        gt=0.0,
        description="Seconds for training passes plus per-epoch validation. Throughput is measured "
        "before the clock starts and the epoch count (at most `epochs`) chosen to fit; None = run `epochs`.",
    )
    batch_size: int = Field(256, gt=0, description="Images per optimiser step and process (x processes under DDP).")
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = Field("sgd", description="Optimiser.")
    lr: float = Field(0.1, gt=0.0, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum (SGD, RMSprop).")
    nesterov: bool = Field(True, description="Nesterov momentum (SGD only).")
    weight_decay: float = Field(5e-4, ge=0.0, description="Decoupled (AdamW) or L2 weight decay.")
    l1: float = Field(
        0.0,
        ge=0.0,
        description="L1 regularisation of conv/linear weights, as a proximal step after each optimiser step "
        "(soft-thresholding by lr x l1): unlike L2, it sets small weights exactly to zero. 0 = off.",
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Cross-entropy smoothing.")
    flip: bool = Field(True, description="Random horizontal flip augmentation.")
    flip_mode: Literal["random", "alternate"] = Field(
        "random",
        description="With flip: 'random' flips each image with probability 1/2 every epoch; 'alternate' "
        "(airbench, Jordan 2024) draws each image's flip once from the seed and inverts it every other "
        "epoch, so every two epochs show each image both ways.",
    )
    crop_padding: int = Field(4, ge=0, le=16, description="Random-crop padding, pixels; 0 = off.")
    progressive_scale: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Progressive resizing: the first epochs (progressive_fraction of them, rounded down) train "
        "on batches downscaled to this share of the image side (0.75: 32 -> 24 px; antialiased, after "
        "augmentation), cheaper steps; the rest and all evaluation at full size. The time budget plans with both "
        "step times. fastnet and resnet18 only; None = off.",
    )
    progressive_fraction: float = Field(
        0.5, gt=0.0, lt=1.0, description="With progressive_scale: the share of the epochs trained downscaled."
    )
    schedule: Literal["constant", "cosine", "onecycle"] = Field(
        "onecycle", description="LR schedule: constant, cosine decay, or linear warm-up + decay."
    )
    warmup_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of steps spent warming up linearly (onecycle, cosine)."
    )
    ema_decay: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="EMA of the weights, with the decay warmed up as min(decay, (1+n)/(10+n)) "
        "over n updates; the raw or averaged weights are kept, whichever validates better. None = off.",
    )
    ema_every: int = Field(1, ge=1, description="Average every k optimiser steps (decay**k per update).")
    val_every: int = Field(1, ge=1, description="Validate every k epochs (and always after the last).")
    val_subset: int | None = Field(
        2000,
        gt=0,
        description="Images of the validation split scored per epoch, without TTA (seeded sample); "
        "None = all. The whole split is scored, with TTA, once at the end.",
    )
    tta: bool = Field(False, description="Test-time augmentation: average logits with the flip.")
    tta_translate: int = Field(
        0, ge=0, le=4, description="With tta, also average views shifted by this many pixels (airbench); 0 = off."
    )
    seed: int = Field(0, description="Seed of initialisation, shuffling and augmentation.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when present.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast on CUDA; on a CPU the faster of fp32 and bf16 in a timed trial."
    )
    num_threads: int | None = Field(None, gt=0, description="torch CPU threads; None = default.")
    compile: bool = Field(False, description="torch.compile the model (compile time is not training time).")
    cuda_graphs: bool = Field(
        False,
        description="With compile, on a GPU: record each training step's kernels once and replay them as CUDA "
        "graphs (torch.compile's 'reduce-overhead'), so the host no longer launches them one by one. No effect "
        "without compile, on a CPU, or under data-parallel training (never measured there; logged).",
    )
    drop_last: bool = Field(True, description="Drop each epoch's last partial batch (one shape: no re-tuning).")
    checkpoint_every: int = Field(1, gt=0, description="Save a checkpoint every N epochs.")

    @model_validator(mode="after")
    def _translate_needs_tta(self) -> TrainConfig:
        if self.tta_translate and not self.tta:
            raise ValueError(f"tta_translate={self.tta_translate} needs tta=true")
        if self.progressive_scale is not None and self.model == "tutorial_net":
            raise ValueError("progressive_scale is for fastnet and resnet18: tutorial_net takes 32 px images only")
        if self.identity_init and self.model != "fastnet":
            raise ValueError(f"identity_init=true is for model 'fastnet' only, not {self.model!r}")
        if self.dp is not None:
            clashes = {
                "compile": self.compile,  # Opacus hooks every layer; the compiled graph would bypass them
                "world_size": self.processes > 1,
                "teacher": self.teacher is not None,
                "progressive_scale": self.progressive_scale is not None,  # never timed under DP
            }
            bad = [name for name, on in clashes.items() if on]
            if bad:
                raise ValueError(f"dp (differentially private training) cannot be combined with {', '.join(bad)}")
        if self.nodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                f"nodes={self.nodes} needs rdzv_endpoint: host:port of this machine, where the other nodes join"
            )
        return self

    @property
    def processes(self) -> int:
        """Data-parallel processes in all: `world_size` on each of `nodes` machines."""
        return self.world_size * self.nodes

    target_accuracy: float | None = Field(
        None, gt=0.0, le=1.0, description="Validation accuracy whose first reach is timed (seconds of training)."
    )
    init_from: str | None = Field(
        None,
        description="Fine-tune: MLflow pipeline run id or checkpoint path whose weights start training; "
        "layers whose shapes differ (the classifier, for other classes) start fresh.",
    )
    teacher: str | None = Field(
        None, description="Distil: MLflow pipeline run id or checkpoint path of a teacher trained on the same classes."
    )
    distill_alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the distillation term (0 = plain CE).")
    distill_temperature: float = Field(4.0, gt=0.0, description="Softmax temperature of the distillation term.")
    world_size: int = Field(
        1,
        ge=1,
        le=64,
        description="Data-parallel processes on each node (torchrun + DistributedDataParallel); 1 = in-process.",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=64,
        description="Machines in the data-parallel job (torchrun, c10d rendezvous at train.rdzv_endpoint); "
        "this one is node 0, each other runs the torchrun command the train stage logs (docs/deploy.md).",
    )
    rdzv_endpoint: str | None = Field(
        None,
        pattern=r"^[^\s:]+:\d{1,5}$",
        description="host:port of this machine where the other nodes join (train.nodes > 1).",
    )
    rdzv_timeout_s: float = Field(
        600.0, gt=0, description="Seconds to wait for every node to join the rendezvous before failing."
    )
    dp: DPConfig | None = Field(
        None, description="Differentially private training (Opacus DP-SGD); None = ordinary training."
    )


class EvalConfig(_Section):
    """Test metrics, the calibration check and the temperature fitted on the validation split."""

    batch_size: int = Field(1000, gt=0, description="Images per inference batch.")
    ece_bins: int = Field(15, gt=1, description="Equal-width confidence bins for ECE.")
    warn_ece: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Warn when the shipped model's test ECE (after temperature scaling) exceeds this; 0..1, 0 ideal.",
    )
    max_ece: float = Field(
        0.15, ge=0.0, le=1.0, description="Fail the calibration check when that ECE exceeds this; 0..1."
    )

    @model_validator(mode="after")
    def _warn_below_fail(self) -> EvalConfig:
        if self.warn_ece > self.max_ece:
            raise ValueError(f"warn_ece={self.warn_ece} exceeds max_ece={self.max_ece}")
        return self


class FairnessConfig(_Section):
    """Per-class quality of service (one-vs-rest recall per class) and subgroups within classes.

    Verdicts are three-valued and decided on intervals: Wilson intervals per class, widened by a
    Bonferroni correction over the classes so that claims about the worst class (and about the
    gap, max minus min) hold at `confidence` simultaneously."""

    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Simultaneous two-sided interval level.")
    min_class_recall: float = Field(
        0.5, ge=0.0, le=1.0, description="Policy: every class's recall must be at least this (0..1)."
    )
    max_recall_gap: float = Field(
        0.3, ge=0.0, le=1.0, description="Policy: best minus worst class recall may be at most this (0..1)."
    )
    metadata: str | None = Field(
        None,
        description="CSV with a `path` column (image path inside the data source, as `split/class/file`) "
        "and one column per attribute; its groups are audited within each class. None = derived attributes only.",
    )
    derived_attributes: tuple[Literal["brightness", "colourfulness"], ...] = Field(
        ("brightness", "colourfulness"),
        description="Image attributes computed from pixels and cut into `attribute_bins` quantile groups.",
    )
    attribute_bins: int = Field(3, ge=2, le=10, description="Quantile groups per derived attribute (3 = terciles).")
    min_group_count: int = Field(
        30, ge=1, description="Subgroup cells (class x group) with fewer test images are shown but not judged."
    )
    max_subgroup_gap: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Policy: within a class, the recall (TPR) gap between attribute groups may be at most this.",
    )
    mitigation: Literal["none", "logit_adjustment"] = Field(
        "logit_adjustment",
        description="Per-class logit offsets tuned on the validation split to raise the worst class; "
        "shown before/after in the report (the shipped model is unchanged). When the adjusted model passes a "
        "fairness check the plain one does not, it is exported as the ONNX variant `model.adjusted.onnx`.",
    )
    mitigation_max_accuracy_drop: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="Policy: the adjusted variant may lose at most this many accuracy points against the plain "
        "model (paired exact interval on the test split).",
    )
    n_bootstrap: int = Field(
        1000, ge=100, description="Image resamples for the rank correlation of the per-class fairness x privacy view."
    )
    seed: int = Field(0, description="Seed of resampling.")


class TransparencyConfig(_Section):
    """What the shipped model looks at (Captum attributions on a seeded sample of test images),
    whether those maps can be trusted (the model-randomisation sanity check, deletion against
    random deletion), and the shortcut check: per class, the small window where attribution
    concentrates, tested causally both ways against a random window of the same size."""

    method: Literal["integrated_gradients", "saliency"] = Field(
        "integrated_gradients",
        description="Captum attribution method: Integrated Gradients (per pixel, any architecture) or the "
        "plain input gradient (cheaper, noisier).",
    )
    steps: int = Field(16, ge=2, le=256, description="Integrated Gradients: points on the path from the baseline.")
    per_class: int = Field(
        12, ge=2, le=200, description="Test images explained per class (confident correct, confident wrong, random)."
    )
    confident: int = Field(2, ge=0, le=20, description="Of those, the most confident correct and wrong ones each.")
    max_explained: int = Field(
        240, ge=10, description="At most this many images explained in all; many classes get fewer each (2 at least)."
    )
    randomized_layers: int = Field(
        2, ge=1, description="Sanity check: the top convolution and linear layers re-initialised, from the output."
    )
    max_sanity_correlation: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Policy: the mean rank correlation between the trained and the randomised model's maps "
        "must be below this (its interval's upper end), or the maps are not shown as explanations.",
    )
    window_fraction: float = Field(
        0.04, gt=0.0, le=0.05, description="The shortcut window's share of the image (a square, at most 5%)."
    )
    min_necessity_drop: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Policy: a shortcut's window, occluded, removes at least this share of the class's recall "
        "beyond a random window (lower end of the paired exact interval).",
    )
    min_sufficiency_rise: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Policy: a shortcut's window, pasted onto other classes' images, turns at least this share "
        "of them into the class beyond a random window (lower end of the paired exact interval).",
    )
    max_images_per_test: int = Field(
        500, ge=10, description="Test images per causal test and class (the class's own; others for pasting)."
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="Interval level; the shortcut tests hold at it over all classes together."
    )
    seed: int = Field(0, ge=0, description="Seed of the sample, the random windows and the randomised layers.")


AttackName = Literal["loss", "rmia", "lira"]


class PrivacyConfig(_Section):
    """Membership inference against the deployed model (no TTA).

    Tiers: `loss` (Yeom et al. 2018; no reference models) is cheap; `rmia` (Zarifzadeh et al.
    2024) and `lira` (Carlini et al. 2022) need reference models trained with the target's
    recipe on random halves of a population pool that excludes the audited images (offline),
    or that includes half of them in each model (online)."""

    n_samples: int = Field(
        10_000,
        gt=0,
        description="Audited non-members (test images) and as many members (training images, same class "
        "counts); TPR at 0.1% FPR needs 10,000 non-members to rest on 10 expected false positives.",
    )
    attacks: tuple[AttackName, ...] = Field(
        ("loss", "rmia", "lira"), min_length=1, description="Attacks run (reference-model ones need references > 0)."
    )
    references: int = Field(0, ge=0, le=64, description="Reference models for rmia/lira; 0 = loss attack only.")
    reference_mode: Literal["offline", "online"] = Field(
        "offline",
        description="offline: no reference model saw an audited image (RMIA offline, LiRA offline); "
        "online: each saw a random half of them (RMIA online, LiRA online; needs references >= 2).",
    )
    reference_budget_s: float | None = Field(
        None,
        gt=0.0,
        description="Skip the reference-model tiers when training the uncached ones is estimated to take longer "
        "than this (seconds, from the target's training time); the report names the tier that ran. None = always.",
    )
    reference_runner: Literal["local", "dask"] = Field(
        "local", description="local: reference models train one after another here; dask: on `dask_address`."
    )
    dask_address: str | None = Field(
        None, description="Scheduler of a Dask cluster (tcp://host:8786) for reference_runner=dask."
    )
    queries: Literal[1, 2, 18] = Field(
        1,
        description="Queries per audited image, for every attack and model: 1 = the image; 2 = and its mirror; "
        "18 = both, each shifted by -2/0/+2 px in each direction (RMIA's and LiRA's augmented queries). Scores "
        "are averaged over the queries; each query is one more pass of the target and every reference model over "
        "the audited images.",
    )
    rmia_offline_a: float = Field(
        0.3, ge=0.0, le=1.0, description="RMIA offline scaling a: Pr(x) ~ ((1+a) Pr_out(x) + (1-a)) / 2."
    )
    rmia_gamma: float = Field(1.0, ge=1.0, description="RMIA likelihood-ratio threshold gamma against population z.")
    fpr_levels: tuple[float, ...] = Field(
        (0.01, 0.001, 0.0001), min_length=1, description="False-positive rates at which TPR is reported."
    )
    min_expected_false_positives: int = Field(
        10, ge=1, description="A TPR at FPR f is stated only when f x non-members reaches this."
    )
    verdict_fpr: float = Field(0.01, gt=0.0, lt=1.0, description="The FPR of the privacy verdict's operating point.")
    max_tpr_at_fpr: float = Field(
        0.05,
        gt=0.0,
        le=1.0,
        description="Policy: the strongest attack's TPR at verdict_fpr may be at most this (chance = verdict_fpr; "
        "0.05 at 1% FPR = 5x chance, an empirical epsilon of about ln 5 = 1.6).",
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="Two-sided interval level; the canary bound's one-sided confidence."
    )
    seed: int = Field(0, description="Seed of the audited sample and of the reference models' halves.")
    canaries: int = Field(
        0,
        ge=0,
        description="One-run epsilon lower bound (Steinke, Nasr & Jagielski 2023): this many training images "
        "become canaries, each trained on with probability 1/2 (seeded by privacy.seed), and the shipped model's "
        "losses on them bound epsilon from below; shown beside DP-SGD's accountant. Costs the target about half "
        "of them as training images; never audited as members. 0 = off, else at least 100.",
    )

    @model_validator(mode="after")
    def _online_needs_two(self) -> PrivacyConfig:
        if 0 < self.canaries < 100:
            raise ValueError(f"canaries={self.canaries} is too few to guess from: use 0 (off) or at least 100")
        if self.reference_mode == "online" and 0 < self.references < 2:
            raise ValueError(f"reference_mode='online' needs references >= 2, got {self.references}")
        if self.reference_runner == "dask" and not self.dask_address:
            raise ValueError("reference_runner='dask' needs dask_address (tcp://host:8786)")
        if self.verdict_fpr not in self.fpr_levels:
            raise ValueError(f"verdict_fpr={self.verdict_fpr} must be one of fpr_levels={list(self.fpr_levels)}")
        return self


class ExportConfig(_Section):
    """ONNX variants of the trained model and the checks each must pass before it may ship."""

    opset: int = Field(
        20, ge=13, le=23, description="ONNX opset version (20+ keeps GELU one op, which ONNX Runtime fuses)."
    )
    parity_samples: int = Field(512, gt=0, description="Test images compared torch vs the FP32 ONNX model.")
    max_abs_diff: float = Field(1e-3, gt=0.0, description="Largest allowed FP32 logit difference.")
    max_probability_diff: float = Field(
        1e-3,
        gt=0.0,
        le=1.0,
        description="Largest allowed FP32 difference in the calibrated `probabilities` output (0..1) against "
        "softmax(torch logits / T).",
    )
    variants: tuple[Literal["fp32", "int8", "fp16"], ...] = Field(
        ("fp32", "int8", "fp16"),
        min_length=1,
        description="Variants built: fp32 (graph-optimised, always built), "
        "int8 (static QDQ quantization for CPUs), fp16 (for GPU providers).",
    )
    calibration_method: Literal["minmax", "entropy", "percentile", "distribution"] = Field(
        "minmax", description="How INT8 activation ranges are chosen from the calibration images."
    )
    calibration_samples: int = Field(
        512, gt=0, description="Training images (seeded sample) run through the model to calibrate INT8 ranges."
    )
    calibration_seed: int = Field(0, description="Seed of the calibration sample.")
    int8_reduce_range: bool = Field(
        True, description="7-bit INT8 weights: avoids int16 saturation in the u8s8 kernels of CPUs without VNNI."
    )
    int8_gelu: Literal["integer", "float"] = Field(
        "integer",
        description="GELU in the INT8 model: integer (x * sigmoid(1.702 x) with ONNX Runtime's QLinearSigmoid "
        "and QLinearMul, staying in uint8) or float (dequantize, exact GELU, quantize again).",
    )
    max_accuracy_drop: float = Field(
        0.5,
        ge=0.0,
        le=100.0,
        description="Percentage points of test accuracy a variant (INT8, FP16) may lose against the FP32 model, "
        "judged on the paired exact interval: recommended only when the whole interval is within it, failing "
        "when the whole interval is beyond it, inconclusive otherwise. Never changes verdict/overall.",
    )
    max_class_recall_drop: float = Field(
        5.0,
        ge=0.0,
        le=100.0,
        description="Percentage points of any one class's recall a variant may lose, judged the same way on "
        "intervals simultaneous over the classes.",
    )
    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1.0,
        description="Level of a variant's accuracy interval, and of its per-class intervals together (Bonferroni).",
    )
    check_samples: int = Field(8, gt=0, description="Sample queries each variant answers in every provider.")

    @model_validator(mode="after")
    def _fp32_first(self) -> ExportConfig:
        if "fp32" not in self.variants:
            raise ValueError(f"variants={list(self.variants)} must include 'fp32': the others are built from it")
        return self


BenchBackend = Literal[
    "torch-eager",
    "torch-compile",
    "onnx-fp32",
    "onnx-int8",
    "torch-eager-cuda",
    "torch-compile-cuda",
    "torch-cudagraph-fp16-cuda",
    "torch-cudagraph-bf16-cuda",
    "onnx-fp32-cuda",
    "onnx-fp16-cuda",
    "onnx-fp16-tensorrt",
]


class BenchmarkConfig(_Section):
    """Inference timing. Each case is time-boxed: at least `iterations` repetitions and `min_seconds`,
    at most `max_seconds`, so p99 rests on enough samples where the budget allows."""

    batch_sizes: tuple[int, ...] = Field((1, 32, 256), min_length=1, description="Batch sizes timed, images.")
    backends: tuple[BenchBackend, ...] | None = Field(
        None, description="Backends timed; None = every one that can run here (GPU ones need CUDA)."
    )
    warmup: int = Field(5, ge=0, description="Untimed calls per case (torch.compile compiles during these).")
    iterations: int = Field(200, gt=0, description="Least timed repetitions per case (time allowing).")
    min_seconds: float = Field(1.0, ge=0.0, description="Least timed seconds per case.")
    max_seconds: float = Field(20.0, gt=0.0, description="Most timed seconds per case; ends a case early.")
    num_threads: int | None = Field(
        None, gt=0, description="CPU threads for torch and ONNX Runtime alike; None = every core this process may use."
    )

    @model_validator(mode="after")
    def _positive_batches(self) -> BenchmarkConfig:
        bad = [b for b in self.batch_sizes if b <= 0]
        if bad:
            raise ValueError(f"batch sizes must be positive, got {bad}")
        if self.min_seconds > self.max_seconds:
            raise ValueError(f"min_seconds={self.min_seconds} exceeds max_seconds={self.max_seconds}")
        return self


class WaiverConfig(_Section):
    """An inconclusive check accepted in the config (`release.waivers`): the same record as
    `auditflow promote RUN_ID --waive CHECK --reason TEXT --by NAME`."""

    check: str = Field(min_length=1, description="Verdict group, e.g. fairness or fairness_subgroups.")
    reason: str = Field(min_length=1, description="Why the open check is acceptable.")
    by: str = Field(min_length=1, description="Who accepts it.")


class ReleaseConfig(_Section):
    """Release gate: absolute bounds on the run, and regressions allowed against the current `champion`."""

    model_name: str | None = Field(
        None, min_length=1, description="Registered model in the MLflow registry; None = the run's experiment name."
    )
    min_accuracy: float = Field(
        0.5, ge=0.0, le=1.0, description="Shipped model's test accuracy must be at least this (0..1)."
    )
    max_accuracy_drop: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Test accuracy may be at most this below the champion's (0..1; 0.01 = 1 point).",
    )
    min_worst_class_recall: float = Field(
        0.5, ge=0.0, le=1.0, description="Lowest per-class recall must be at least this (0..1)."
    )
    max_worst_class_recall_drop: float = Field(
        0.02, ge=0.0, le=1.0, description="Worst-class recall may be at most this below the champion's (0..1)."
    )
    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1.0,
        description="Two-sided level of the paired intervals (candidate vs champion on the same images) that "
        "decide the accuracy, worst-class recall and attack TPR regressions.",
    )
    min_overall_verdict: Literal["pass", "inconclusive"] = Field(
        "pass",
        description="Weakest overall audit verdict accepted (inconclusive: no audit failed, some could not "
        "decide on the data at hand).",
    )
    min_fairness_verdict: Literal["pass", "inconclusive"] = Field(
        "pass", description="Weakest fairness verdict accepted; it may also be no worse than the champion's."
    )
    waivers: tuple[WaiverConfig, ...] = Field(
        (),
        description="Inconclusive checks accepted before the gate judges the run (check, reason, by); one whose "
        "check passed or failed is not applied. The audit verdicts are unchanged.",
    )
    max_privacy_tpr: float = Field(
        0.05,
        gt=0.0,
        le=1.0,
        description="Upper interval bound of the strongest attack's TPR at the verdict FPR: at most this (0..1).",
    )
    max_privacy_tpr_increase: float = Field(
        0.01, ge=0.0, le=1.0, description="That TPR (point value) may be at most this above the champion's (0..1)."
    )
    max_onnx_abs_diff: float = Field(
        1e-3, gt=0.0, description="Largest FP32 ONNX-vs-torch logit difference allowed (logits)."
    )
    max_onnx_abs_diff_increase: float = Field(
        1e-3, ge=0.0, description="That difference may be at most this above the champion's (logits)."
    )
    latency_backend: BenchBackend = Field("onnx-fp32", description="Benchmark backend whose latency is gated.")
    latency_batch_size: int = Field(1, gt=0, description="Batch size whose median latency is gated (images).")
    max_latency_ms: float = Field(100.0, gt=0.0, description="Median latency must be at most this (milliseconds).")
    max_latency_ratio: float = Field(
        1.25,
        ge=1.0,
        description="Median latency may be at most this many times the champion's, when both ran on the same hardware.",
    )


class TrackingConfig(_Section):
    experiment: str = Field("auditflow", min_length=1, description="MLflow experiment name.")
    tracking_uri: str | None = Field(
        None, description="MLflow URI; None = $MLFLOW_TRACKING_URI or sqlite in the workdir."
    )
    ui_url: str | None = Field(
        None,
        description="Address of the MLflow UI that shows this store, for the links in the report; "
        "None = the tracking URI when it is http(s), else http://127.0.0.1:5000 (where `auditflow ui` serves).",
    )


class CardConfig(_Section):
    """What the model card and the datasheet state that the data cannot tell: who, which licence,
    what for. Shown as given; the defaults say that they were not set."""

    model_name: str | None = Field(
        None,
        description="Model name on the card; None = the registered model's (release.model_name, else the experiment).",
    )
    version: str | None = Field(None, description="Model version; None = the registered version and the run name.")
    owner: str = Field("unspecified (set card.owner)", description="Team or person answerable for the model.")
    licence: str = Field("unspecified (set card.licence)", description="Licence of the model weights.")
    citation: str | None = Field(
        None, description="How to cite the model (BibTeX or a sentence); None = a generated reference to the run."
    )
    intended_uses: tuple[str, ...] = Field(
        (
            "Research and internal evaluation of image classification on images like the training data.",
            "A reviewer's starting point for a ship / no-ship decision, read together with the checks.",
        ),
        description="Intended uses, one sentence each.",
    )
    out_of_scope_uses: tuple[str, ...] = Field(
        (
            "Decisions about people, or images of people: no audit over demographic groups was run.",
            "Images unlike the training data (other sizes, domains or classes): accuracy there is unknown.",
            "Any use that needs a certified or safety-rated model.",
        ),
        description="Out-of-scope uses, one sentence each.",
    )
    data_source: str | None = Field(
        None, description="Where the data came from, in words; None = the pipeline's data argument."
    )
    data_licence: str = Field("unspecified (set card.data_licence)", description="Licence of the data.")
    duplicate_max_distance: int = Field(
        4,
        ge=0,
        le=64,
        description="Train/test pairs whose 64-bit difference hashes differ in at most this many "
        "bits count as near duplicates in the datasheet.",
    )
    examples_per_class: int = Field(4, ge=1, le=16, description="Example images per class in the datasheet.")


class ReportConfig(_Section):
    pdf: bool = Field(
        True,
        description="Print the audit report to PDF with WeasyPrint (about 10 s of CPU on 2 cores); "
        "false = HTML and Markdown only (a browser prints the HTML as well).",
    )


class PipelineConfig(_Section):
    """The whole run. `profile` records which profile file it came from."""

    profile: str = Field("custom", description="Name of the profile this config came from.")
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    fairness: FairnessConfig = FairnessConfig()
    transparency: TransparencyConfig = TransparencyConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    export: ExportConfig = ExportConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    tracking: TrackingConfig = TrackingConfig()
    card: CardConfig = CardConfig()
    release: ReleaseConfig = ReleaseConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _model_fits_the_images(self) -> PipelineConfig:
        # The tutorial Net's classifier is sized for 32x32 inputs (16 x 5 x 5 features);
        # fastnet and resnet18 pool adaptively and take any size.
        if self.train.model == "tutorial_net" and self.data.image_size != 32:
            raise ValueError(
                f"train.model='tutorial_net' takes 32x32 images only (its classifier expects 16x5x5 features), "
                f"but data.image_size={self.data.image_size}; use fastnet or resnet18, or data.image_size=32"
            )
        if self.privacy.canaries and self.train.processes > 1:
            raise ValueError(
                f"privacy.canaries={self.privacy.canaries} needs single-process training, "
                f"but train.world_size={self.train.world_size} and train.nodes={self.train.nodes}"
            )
        return self

    def flat(self) -> dict[str, str]:
        """`section.field -> value` strings, as MLflow params."""
        out: dict[str, str] = {}
        for section, values in self.model_dump(mode="json").items():
            if isinstance(values, dict):
                for key, value in values.items():
                    out[f"{section}.{key}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
            else:
                out[section] = str(values)
        return out


def available_profiles() -> list[str]:
    """Names of the profiles shipped with the package."""
    folder = resources.files("auditflow.core") / "profiles"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_profile(profile: str, seen: frozenset[str] = frozenset()) -> dict[str, Any]:
    path = Path(profile)
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise ConfigError(f"profile file {profile!r} does not exist")
        text = path.read_text()
        name = path.stem
    else:
        shipped = resources.files("auditflow.core") / "profiles" / f"{profile}.yaml"
        if not shipped.is_file():
            raise ConfigError(
                f"unknown profile {profile!r}; choose one of {available_profiles()} or give a path to a .yaml file"
            )
        text = shipped.read_text()
        name = profile
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"profile {profile!r} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"profile {profile!r} must be a mapping of sections, got {type(raw).__name__}")
    raw.setdefault("profile", name)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str) or base in seen | {profile}:
        raise ConfigError(f"profile {profile!r}: extends={base!r} must name another profile, without cycles")
    return _merge(_read_profile(base, seen | {profile}), raw)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, section by section (a profile that `extends` another overrides fields)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `a.b=value` override to a nested dict in place (value parsed as YAML)."""
    key, sep, value = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like section.field=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: value is not valid YAML: {err}") from err
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = parsed


def _format_validation(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "<root>"
        got = item.get("input")
        shown = f" (got {got!r})" if not isinstance(got, dict) else ""
        lines.append(f"{field}: {item['msg']}{shown}")
    return "invalid configuration: " + "; ".join(lines)


def sections_config(overrides: list[str], sections: tuple[str, ...], *, command: str) -> PipelineConfig:
    """Today's defaults with `overrides` applied, which may only touch `sections` (a command
    such as `bench` that redoes part of a past run); `ConfigError` naming an override outside them."""
    raw: dict[str, Any] = {}
    for override in overrides:
        if not override.strip().startswith(tuple(f"{section}." for section in sections)):
            allowed = " and ".join(f"{section}.*" for section in sections)
            raise ConfigError(f"--set {override!r}: {command} takes only {allowed} overrides")
        apply_override(raw, override)
    return build_config(raw)


def build_config(raw: dict[str, Any]) -> PipelineConfig:
    """Validate a nested dict into a `PipelineConfig`, raising `ConfigError` naming fields."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation(err)) from err


def load_config(profile: str = "quick", overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Load a shipped profile (or YAML path), apply `section.field=value` overrides, validate."""
    raw = _read_profile(profile)
    for override in overrides:
        apply_override(raw, override)
    return build_config(raw)


class SearchParam(_Section):
    """One dimension of a hyperparameter search (`auditflow tune`): a numeric range or a list of
    choices, for the config field its key in the search-space YAML names (`train.lr`)."""

    low: float | None = Field(None, description="Smallest value of a range (inclusive), in the field's unit.")
    high: float | None = Field(None, description="Largest value of a range (inclusive), in the field's unit.")
    log: bool = Field(False, description="Sample the range uniformly in log space (needs low > 0).")
    step: float | None = Field(
        None, gt=0.0, description="Spacing of the values a range takes; None = continuous (floats) or 1 (integers)."
    )
    choices: tuple[str | int | float | bool | None, ...] | None = Field(
        None, description="Values to choose among instead of a range (YAML scalars; null = the field's None)."
    )

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchParam:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("give either choices or a low/high range, not both")
            if not self.choices:
                raise ValueError("empty choices: give at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices)")
        if self.low > self.high:
            raise ValueError(f"empty range: low={self.low:g} > high={self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got low={self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("a log-scale range takes no step")
        return self
