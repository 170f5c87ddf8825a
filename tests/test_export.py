"""ONNX variants: export, offline optimisation, INT8/FP16 conversion and the checks before shipping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import _image

from auditflow.core.config import ExportConfig
from auditflow.core.errors import ModelError
from auditflow.models.export.onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    OUTPUT_NAMES,
    PROBABILITIES_NAME,
    TEMPERATURE_KEY,
    calibrated_probabilities,
    check_parity,
    onnx_outputs,
    onnx_session,
    torch_logits,
)
from auditflow.models.export.variants import MANIFEST, build_variants, check_variant, read_manifest, write_manifest
from auditflow.models.training.presets import to_input
from auditflow.models.training.registry import build_model, prepare_from_data

T = 0.586  # the calibration temperature folded into the toy exports
CLASSES = ("a", "b", "c")


def toy_model_and_images(n: int = 60, steps: int = 10) -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    """A width-8 fastnet trained a few steps on the conftest toy images, so its logits are
    far enough apart that quantization noise is judged, not ties."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    images = np.stack([_image(int(c), rng) for c in labels])
    torch.manual_seed(0)
    model = build_model("fastnet", 3, width=8)
    prepare_from_data(model, to_input(images))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(to_input(images)), torch.as_tensor(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), images, labels


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory):
    model, images, labels = toy_model_and_images()
    paths, calibration = build_variants(
        model,
        image_shape=(32, 32, 3),
        out_dir=tmp_path_factory.mktemp("onnx"),
        calibration_images=images[:32],
        cfg=ExportConfig(),
        temperature=T,
        fitted_on="the validation split (20 images)",
    )
    return model, images, labels, paths, calibration


def _check(variant: str, path: Path, images: np.ndarray, labels: np.ndarray, reference: np.ndarray, **cfg):
    return check_variant(
        variant,
        path,
        test_x=images,
        test_y=labels,
        classes=CLASSES,
        reference_logits=reference,
        cfg=ExportConfig(**cfg),
        temperature=T,
    )


def test_every_variant_is_built_and_the_shipped_file_is_valid_with_dynamic_batch(variants) -> None:
    _, images, _, paths, calibration = variants
    assert set(paths) == {"fp32", "int8", "fp16"}
    assert not (paths["fp32"].parent / "model.raw.onnx").exists()  # only the optimised file ships
    graph = onnx.load(str(paths["fp32"])).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.output] == [OUTPUT_NAME, PROBABILITIES_NAME] == list(OUTPUT_NAMES)
    dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value  # symbolic batch axis
    assert "Gelu" in {n.op_type for n in graph.node}  # one op, fused by the optimiser at opset 20
    int8_ops = {n.op_type for n in onnx.load(str(paths["int8"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= int8_ops
    assert (calibration.method, calibration.n_images, calibration.gelu) == ("minmax", 32, "integer")
    assert "QLinearSigmoid" in int8_ops and "BatchNormalization" not in {n.op_type for n in graph.node}
    for path in paths.values():
        session = onnx_session(path)
        for n in (1, 7):
            out = session.run([OUTPUT_NAME], {INPUT_NAME: to_input(images[:n]).numpy()})[0]
            assert out.shape == (n, 3) and out.dtype == np.float32


@pytest.mark.parametrize("variant", ["fp32", "int8", "fp16"])
def test_every_file_ships_calibrated_probabilities_and_says_so(variants, variant: str) -> None:
    """The second output is softmax(logits / T) of the file's own logits, with T inside the file."""
    _, images, _, paths, _ = variants
    session = onnx_session(paths[variant])
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME, PROBABILITIES_NAME]
    assert float(session.get_modelmeta().custom_metadata_map[TEMPERATURE_KEY]) == T
    logits, probabilities = onnx_outputs(session, images[:7])
    assert probabilities.shape == (7, 3) and probabilities.dtype == np.float32
    expected = np.exp(logits.astype(np.float64) / T)
    expected /= expected.sum(1, keepdims=True)  # brute force, float64
    # FP16 computes the head in half precision; INT8 keeps it float (not quantized)
    assert np.abs(probabilities - expected).max() < (2e-3 if variant == "fp16" else 1e-6)
    assert (probabilities.argmax(1) == logits.argmax(1)).all()
    proto = onnx.load(str(paths[variant]))
    docs = {o.name: o.doc_string for o in proto.graph.output}
    assert "softmax(logits / T)" in docs[PROBABILITIES_NAME] and "T = 0.586" in docs[PROBABILITIES_NAME]
    assert "validation split (20 images)" in proto.doc_string
    if variant == "int8":  # the calibration head is not quantized: no Q/DQ after the logits
        last = [n.op_type for n in proto.graph.node][-2:]
        assert last == ["Div", "Softmax"], last


@pytest.mark.parametrize(("variant", "max_diff"), [("fp32", 1e-4), ("fp16", 2e-2), ("int8", 0.5)])
def test_each_variant_agrees_with_torch_and_passes_its_checks(variants, variant: str, max_diff: float) -> None:
    model, images, labels, paths, _ = variants
    reference = torch_logits(model, images)
    assert (reference.argmax(1) == labels).mean() == 1.0  # the toy model learned the toy classes
    check = _check(variant, paths[variant], images, labels, reference)
    assert check.providers == {"CPUExecutionProvider": "ok"}
    assert check.measured_on == "CPUExecutionProvider"
    assert check.max_abs_diff < max_diff and check.probabilities_max_abs_diff < max_diff
    assert check.top1_agreement == 1.0 and check.accuracy == 1.0 and check.accuracy_drop == 0.0
    assert (check.images_lost, check.images_gained, check.n_images) == (0, 0, 60)
    direct, probabilities = onnx_outputs(onnx_session(paths[variant]), images)
    assert check.max_abs_diff == pytest.approx(np.abs(direct - reference).max())  # brute-force recomputation
    reference_probabilities = calibrated_probabilities(reference, T)
    assert check.probabilities_max_abs_diff == pytest.approx(np.abs(probabilities - reference_probabilities).max())
    if variant == "fp32":  # the shipped file: parity on every test image
        assert check.verdict == "pass" and check.reasons == () and "parity" in check.judged_by
    else:  # no disagreement, but 60 images cannot show that fewer than 0.5 points are lost
        low, high = check.accuracy_drop_ci
        assert low < 0 < 0.5 < high and check.verdict == "inconclusive"
        assert "straddles export.max_accuracy_drop=0.5" in check.reasons[0]


def test_int8_that_loses_too_much_accuracy_is_marked_failing(variants, tmp_path: Path) -> None:
    """Calibrating on black images collapses every activation range: the model stops telling
    the classes apart, and the check must say so with the value and the limit."""
    model, images, labels, _, _ = variants
    paths, _ = build_variants(
        model,
        image_shape=(32, 32, 3),
        out_dir=tmp_path,
        calibration_images=np.zeros_like(images[:16]),
        cfg=ExportConfig(variants=("fp32", "int8")),
    )
    check = _check("int8", paths["int8"], images, labels, torch_logits(model, images))
    assert check.verdict == "fail"
    low, high = check.accuracy_drop_ci
    assert 0.5 < low < check.accuracy_drop < high
    assert check.reasons[0] == (
        f"loses {check.accuracy_drop:.2f} accuracy points [{low:.2f}, {high:.2f}] (95% paired exact interval; "
        f"{check.images_lost} images lost, {check.images_gained} gained of 60): the whole interval is beyond "
        "export.max_accuracy_drop=0.5"
    )


def test_accuracy_drop_is_in_points_against_the_torch_model(variants) -> None:
    model, images, labels, paths, _ = variants
    wrong = labels.copy()
    wrong[:6] = (wrong[:6] + 1) % 3  # the reference is right on 54 of 60 against these labels
    check = _check("fp32", paths["fp32"], images, wrong, torch_logits(model, images), max_accuracy_drop=0.0)
    assert check.reference_accuracy == pytest.approx(0.9)
    assert check.accuracy == pytest.approx(0.9) and check.accuracy_drop == pytest.approx(0.0)
    assert check.verdict == "pass"  # the shipped file is judged by parity, and it agrees everywhere


@pytest.mark.parametrize("damage", ["truncated", "junk", "missing"])
def test_corrupt_truncated_or_missing_onnx_gives_a_model_error_naming_the_file(
    variants, tmp_path: Path, damage: str
) -> None:
    _, images, labels, paths, _ = variants
    bad = tmp_path / f"{damage}.onnx"
    if damage == "truncated":
        bad.write_bytes(paths["fp32"].read_bytes()[:4000])
    elif damage == "junk":
        bad.write_bytes(b"this is not an ONNX model")
    with pytest.raises(ModelError, match=rf"^cannot load ONNX model {bad}: \[ONNXRuntimeError\]") as info:
        onnx_session(bad)
    assert info.value.__cause__ is not None
    assert "\n" not in str(info.value)  # one line for the terminal
    reference = np.zeros((len(images), 3), dtype=np.float32)
    check = _check("fp32", bad, images, labels, reference) if damage != "missing" else None
    if check is not None:  # the check records the error instead of raising, and fails the variant
        assert check.verdict == "fail" and str(bad) in check.providers["CPUExecutionProvider"]
        assert "no provider could run it" in check.reasons[-1]


def test_fp32_parity_detects_a_different_model(variants) -> None:
    import copy

    model, images, _, paths, _ = variants
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[1].head.weight.add_(0.5)
    same = check_parity(model, paths["fp32"], images, temperature=T)
    parity = check_parity(other, paths["fp32"], images, temperature=T)
    assert same.n_samples == 60 and same.max_abs_diff < 1e-4 and same.probabilities_max_abs_diff < 1e-5
    assert parity.max_abs_diff > 100 * max(same.max_abs_diff, 1e-7)


def test_parity_covers_the_probabilities_output(variants) -> None:
    """A file whose temperature is not the one fitted: the logits agree, the probabilities do not."""
    model, images, _, paths, _ = variants
    wrong_t = check_parity(model, paths["fp32"], images, temperature=1.0)
    right_t = check_parity(model, paths["fp32"], images, temperature=T)
    assert wrong_t.max_abs_diff == right_t.max_abs_diff < 1e-4
    assert wrong_t.probabilities_max_abs_diff > 1e-2 > 1e-5 > right_t.probabilities_max_abs_diff


def test_manifest_round_trip_and_fallback(variants, tmp_path: Path) -> None:
    model, images, labels, paths, calibration = variants
    reference = torch_logits(model, images)
    checks = [_check(n, p, images, labels, reference) for n, p in paths.items()]
    manifest = write_manifest(paths["fp32"].parent, checks, calibration)
    assert json.loads(manifest.read_text())["calibration"]["method"] == "minmax"
    # 60 images cannot show a variant keeps the accuracy within 0.5 points: not recommended
    assert read_manifest(paths["fp32"]) == {n: (p, "pass" if n == "fp32" else "inconclusive") for n, p in paths.items()}
    lone = tmp_path / "model.onnx"
    assert read_manifest(lone) == {"fp32": (lone, "pass")}  # runs exported before variants existed
    (tmp_path / MANIFEST).write_text("{}")
    with pytest.raises(ModelError, match="is not a variants manifest"):
        read_manifest(lone)


def test_export_config_needs_fp32_and_names_bad_values() -> None:
    with pytest.raises(ValueError, match="must include 'fp32'"):
        ExportConfig(variants=("int8",))
    with pytest.raises(ValueError, match="calibration_method"):
        ExportConfig(calibration_method="kl")


# ---------------------------------------------------------------- exact folds and integer GELU


def _with_bn_stats(model: torch.nn.Module, seed: int, negative_in: str | None = None) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics (positive scales, or one negative scale in `negative_in`)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, bn in model.named_modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.2, generator=gen)
                bn.running_var.uniform_(0.5, 2.0, generator=gen)
                bn.weight.uniform_(0.5, 1.5, generator=gen)
                bn.bias.normal_(0, 0.2, generator=gen)
                if name == negative_in:
                    bn.weight[0] = -0.7
    return model.eval()


def test_folding_keeps_the_function_and_removes_normalisation_and_pool_batchnorms(tmp_path: Path) -> None:
    from auditflow.models.export.fusion import fold_for_inference
    from auditflow.models.export.onnx import export_onnx, optimize_onnx

    model, images, _ = toy_model_and_images(steps=2)
    model = _with_bn_stats(model, 0)
    folded = fold_for_inference(model)
    x = to_input(images)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=1e-4)
    assert all(isinstance(g.bn1, torch.nn.Identity) for g in folded[1].groups)
    assert isinstance(model[1].groups[0].bn1, torch.nn.BatchNorm2d)  # the original is untouched
    ops = [
        n.op_type
        for n in onnx.load(
            str(optimize_onnx(export_onnx(folded, (32, 32, 3), tmp_path / "r.onnx"), tmp_path / "o.onnx"))
        ).graph.node
    ]
    # a Div left could only be the calibration head's logits / T, just before the softmax
    assert "BatchNormalization" not in ops and "Sub" not in ops and "Div" not in ops[:-2], ops
    assert ops[-1] == "Softmax", ops


def test_a_group_with_a_negative_batchnorm_scale_is_not_folded() -> None:
    """max(a y + b) = a max(y) + b only for a > 0: a group with a negative scale keeps its BatchNorm."""
    from auditflow.models.export.fusion import fold_for_inference

    model, images, _ = toy_model_and_images(steps=2)
    model = _with_bn_stats(model, 1, negative_in="1.groups.1.bn1")
    folded = fold_for_inference(model)
    kinds = [type(g.bn1).__name__ for g in folded[1].groups]
    assert kinds == ["Identity", "BatchNorm2d", "Identity"]
    with torch.no_grad():
        x = to_input(images)
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=1e-4)


def test_integer_gelu_replaces_every_float_gelu_and_keeps_the_answers(variants, tmp_path: Path) -> None:
    from auditflow.models.export.quantize import gelu_as_int8_ops

    model, images, labels, _, _ = variants
    cfg = ExportConfig(variants=("fp32", "int8"), int8_gelu="float")
    paths, calibration = build_variants(
        model, image_shape=(32, 32, 3), out_dir=tmp_path / "float", calibration_images=images[:32], cfg=cfg
    )
    assert calibration is not None and calibration.gelu == "float"
    proto = onnx.load(str(paths["int8"]))
    assert sum(n.op_type == "Gelu" for n in proto.graph.node) == 7  # the whitening stem and two per conv group
    # the last GELU feeds the float global max-pool: its output is never quantized, so it stays
    assert gelu_as_int8_ops(proto) == 6
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Gelu") == 1 and ops.count("QLinearSigmoid") == ops.count("QLinearMul") == 6
    onnx.checker.check_model(proto)
    path = tmp_path / "model.int8.onnx"
    onnx.save(proto, str(path))
    check = _check(
        "int8", path, images, labels, torch_logits(model, images), max_accuracy_drop=100.0, max_class_recall_drop=100.0
    )
    assert check.verdict == "pass" and check.top1_agreement == 1.0, check
    assert gelu_as_int8_ops(proto) == 0  # nothing left to replace


def test_the_adjusted_variant_folds_the_offsets_into_the_graph_and_says_so(variants, tmp_path: Path) -> None:
    """Issue 19: `model.adjusted.onnx` answers torch logits + offsets (calibrated probabilities of
    those), carries its offsets in its metadata, and passes parity with that function."""
    model, images, labels, _, _ = variants
    offsets = (-0.5, 0.0, 0.5)
    paths, _ = build_variants(
        model,
        image_shape=(32, 32, 3),
        out_dir=tmp_path,
        calibration_images=images[:16],
        cfg=ExportConfig(variants=("fp32",)),
        temperature=T,
        offsets=offsets,
    )
    assert set(paths) == {"fp32", "adjusted"} and paths["adjusted"].name == "model.adjusted.onnx"
    reference = torch_logits(model, images)
    logits, probabilities = onnx_outputs(onnx_session(paths["adjusted"]), images)
    np.testing.assert_allclose(logits, reference + np.asarray(offsets, np.float32), atol=1e-4)
    np.testing.assert_allclose(probabilities, calibrated_probabilities(logits, T), atol=1e-5)
    meta = onnx.load(str(paths["adjusted"])).metadata_props
    assert {p.key: p.value for p in meta}["auditflow.logit_offsets"] == "-0.5, 0.0, 0.5"
    check = check_variant(
        "adjusted",
        paths["adjusted"],
        test_x=images,
        test_y=labels,
        classes=CLASSES,
        reference_logits=reference,
        cfg=ExportConfig(),
        temperature=T,
        offsets=offsets,
    )
    assert check.verdict in ("pass", "inconclusive") and check.max_abs_diff < 1e-4, check.reasons
