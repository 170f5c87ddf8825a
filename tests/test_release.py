"""The release gate: pure criteria at their edges, registration and aliases in a temporary
SQLite store with fabricated pipeline runs (no training), the transaction's rollback, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import planted_predictions
from typer.testing import CliRunner

from auditflow.audits.gate import (
    METRICS,
    TAGS,
    GateConfig,
    RunFacts,
    evaluate_gate,
    gate_markdown,
    latency_metric,
    split_identity,
)

runner = CliRunner()
DIGEST = "ab" * 32
GOOD_METRICS = {
    METRICS["accuracy"]: 0.86,
    METRICS["accuracy_ci_low"]: 0.85,
    METRICS["accuracy_ci_high"]: 0.87,
    METRICS["worst_class_recall"]: 0.70,
    METRICS["privacy_tpr"]: 0.02,
    METRICS["privacy_tpr_ci_high"]: 0.03,
    METRICS["onnx_max_abs_diff"]: 2e-6,
    latency_metric(GateConfig()): 1.5,
}
GOOD_TAGS = {
    TAGS["fairness"]: "pass",
    TAGS["privacy"]: "pass",
    TAGS["transparency"]: "pass",
    TAGS["onnx_parity"]: "pass",
}


def facts(run_id: str, version: str = "1", **metrics: float) -> RunFacts:
    values = dict(GOOD_METRICS)
    for key, value in metrics.items():
        values[latency_metric(GateConfig()) if key == "latency_ms" else METRICS[key]] = value
    return RunFacts(
        run_id=run_id * 8,
        metrics=values,
        tags=dict(GOOD_TAGS),
        overall="pass",
        test_split=split_identity(DIGEST, {"data.max_test_per_class": "None"}),
        hardware="test cpu, 2 threads",
        version=version,
    )


def by_key(record) -> dict:
    return {c.key: c for c in record.criteria}


# ------------------------------------------------------------------------------ pure gate logic
def test_thresholds_exactly_met_pass() -> None:
    cfg = GateConfig(min_accuracy=0.79, max_accuracy_drop=0.01, max_privacy_tpr=0.03, max_latency_ratio=1.25)
    champion = facts("a", "1", accuracy=0.80)
    # exactly the absolute bound, exactly the allowed drop (0.80 - 0.01 is not 0.79 in floats)
    candidate = facts("b", "2", accuracy=0.79, latency_ms=1.5 * 1.25)
    record = evaluate_gate(candidate, champion, cfg, model_name="m")
    found = by_key(record)
    assert found["accuracy/minimum"].status == "pass" and found["accuracy/minimum"].reason == "0.79 ≥ 0.79"
    assert found["accuracy/regression"].status == "pass"
    assert found["privacy/tpr_bound"].status == "pass"  # 0.03 upper bound, limit 0.03
    assert found["latency/regression"].status == "pass"  # 1.25 x the champion's, limit 1.25 x
    assert record.verdict == "pass" and record.comparable


def test_regression_beyond_the_allowance_fails_and_says_why() -> None:
    record = evaluate_gate(facts("b", "2", accuracy=0.84), facts("a", "1", accuracy=0.86), GateConfig(), model_name="m")
    found = by_key(record)
    assert found["accuracy/minimum"].status == "pass"  # fine on its own ...
    assert found["accuracy/regression"].status == "fail"  # ... but 2 points below the champion, 1 allowed
    assert record.verdict == "fail"
    assert [c.key for c in record.failing] == ["accuracy/regression"]
    # no paired evidence given (tests/test_compare.py has the paired criteria): the raw difference, said so
    assert record.reasons == (
        "Test accuracy vs champion: 0.84 vs champion v1's 0.86 (-0.02; allowed -0.01; "
        "not paired: no paired evidence was given)",
    )
    assert record.summary() == "fail: " + record.reasons[0]
    assert found["accuracy/regression"].threshold == pytest.approx(0.85)


def test_worse_verdicts_and_latency_fail() -> None:
    candidate = facts("b", "2", latency_ms=1.5 * 1.3)
    candidate.tags[TAGS["fairness"]] = "inconclusive"
    record = evaluate_gate(candidate, facts("a", "1"), GateConfig(), model_name="m")
    found = by_key(record)
    assert found["fairness/verdict"].status == "fail"
    assert found["fairness/verdict"].reason == "inconclusive (required: pass)"
    assert found["fairness/regression"].status == "fail"
    assert found["latency/regression"].status == "fail"
    relaxed = evaluate_gate(candidate, None, GateConfig(min_fairness_verdict="inconclusive"), model_name="m")
    assert by_key(relaxed)["fairness/verdict"].status == "pass"


def test_an_inconclusive_overall_verdict_passes_only_when_the_policy_accepts_it() -> None:
    candidate = replace(facts("b", "2"), overall="inconclusive")
    assert by_key(evaluate_gate(candidate, None, GateConfig(), model_name="m"))["overall/verdict"].status == "fail"
    relaxed = evaluate_gate(candidate, None, GateConfig(min_overall_verdict="inconclusive"), model_name="m")
    assert by_key(relaxed)["overall/verdict"].status == "pass"
    failed = evaluate_gate(
        replace(candidate, overall="fail"), None, GateConfig(min_overall_verdict="inconclusive"), model_name="m"
    )
    assert by_key(failed)["overall/verdict"].status == "fail"


def test_a_missing_metric_is_never_a_pass() -> None:
    candidate = facts("b", "2")
    del candidate.metrics[METRICS["privacy_tpr_ci_high"]]
    del candidate.tags[TAGS["onnx_parity"]]
    record = evaluate_gate(candidate, None, GateConfig(), model_name="m")
    found = by_key(record)
    assert found["privacy/tpr_bound"].status == "inconclusive"
    assert found["privacy/tpr_bound"].value is None
    assert "`privacy/strongest/tpr_at_verdict_fpr_ci_high` is not logged" in found["privacy/tpr_bound"].reason
    assert found["onnx_parity/verdict"].status == "inconclusive"
    assert record.verdict == "fail"
    # the same number missing on the champion: that regression cannot be judged either
    champion = facts("a", "1")
    del champion.metrics[METRICS["worst_class_recall"]]
    record = evaluate_gate(facts("b", "2"), champion, GateConfig(), model_name="m")
    assert by_key(record)["worst_class_recall/regression"].status == "inconclusive"
    assert "champion v1" in by_key(record)["worst_class_recall/regression"].reason
    assert record.verdict == "fail"
    # an overall verdict nobody could work out
    record = evaluate_gate(replace(facts("b", "2"), overall=None), None, GateConfig(), model_name="m")
    assert by_key(record)["overall/verdict"].status == "inconclusive" and record.verdict == "fail"


def test_a_champion_on_another_test_split_is_not_comparable() -> None:
    champion = replace(facts("a", "1", accuracy=0.99), test_split=split_identity("cd" * 32, {}))
    record = evaluate_gate(facts("b", "2", accuracy=0.60), champion, GateConfig(), model_name="m")
    assert not record.comparable
    assert record.comparability.startswith("not comparable: champion v1 was tested on another test split")
    regressions = [c for c in record.criteria if c.kind == "regression"]
    assert regressions and all(c.status == "skipped" for c in regressions)
    assert all(c.reason == record.comparability for c in regressions)
    assert record.verdict == "pass"  # far below the champion, but not on the same images
    assert "not comparable" in gate_markdown(record)
    # a run that records no digest is not comparable either
    unknown = evaluate_gate(replace(facts("b", "2"), test_split=""), facts("a", "1"), GateConfig(), model_name="m")
    assert "records no test-split digest" in unknown.comparability


def test_latency_is_compared_only_on_the_same_hardware() -> None:
    champion = replace(facts("a", "1", latency_ms=0.5), hardware="another cpu, 8 threads")
    record = evaluate_gate(facts("b", "2", latency_ms=1.5), champion, GateConfig(), model_name="m")
    latency = by_key(record)["latency/regression"]
    assert latency.status == "skipped" and "benchmarked on other hardware" in latency.reason
    assert by_key(record)["accuracy/regression"].status == "pass"


def test_no_champion_skips_regressions_and_the_record_is_json() -> None:
    record = evaluate_gate(facts("b", "1"), None, GateConfig(), model_name="m")
    assert record.verdict == "pass" and record.champion is None
    assert record.comparability == "no champion yet: regression criteria skipped"
    logged = json.loads(json.dumps(record.as_dict()))
    assert logged["verdict"] == "pass" and logged["failing"] == [] and len(logged["criteria"]) == 16
    assert {"key", "condition", "value", "threshold", "status", "reason", "evidence"} <= logged["criteria"][0].keys()
    markdown = gate_markdown(logged)  # the logged form renders the same as the record
    assert markdown == gate_markdown(record)
    assert "## Release gate: **pass**" in markdown and "| Test accuracy | **pass** |" in markdown


def test_split_identity_follows_the_seeded_test_cap() -> None:
    assert split_identity(None, {}) == ""
    full = split_identity(DIGEST, {"data.max_test_per_class": "None", "data.seed": "1"})
    assert full == split_identity(DIGEST, {"data.max_test_per_class": "None", "data.seed": "2"})
    capped = {"data.max_test_per_class": "100", "data.seed": "0", "data.max_train_per_class": "None"}
    assert split_identity(DIGEST, capped) != full
    assert split_identity(DIGEST, capped) != split_identity(DIGEST, capped | {"data.seed": "1"})


def test_the_adjusted_variant_is_judged_in_the_plain_files_place() -> None:
    """Issue 19: a plain model whose fairness is inconclusive fails the gate; its logit-adjusted
    variant, whose own fairness passes at an accuracy it can afford, is judged by the same
    criteria with its own numbers, and the decision names it as the way forward."""
    from auditflow.audits.decision import decide
    from auditflow.audits.gate import adjusted_facts
    from auditflow.core.names import Export, Fairness, Verdict, verdict_tag

    plain = facts("b")
    plain = replace(plain, tags=plain.tags | {TAGS["fairness"]: "inconclusive"}, overall="inconclusive")
    assert adjusted_facts(plain) is None  # nothing exported: no alternative
    variant = Verdict.ADJUSTED_VARIANT
    exported = {
        Export.VARIANT.format(variant=variant, name="accuracy"): 0.855,
        Export.VARIANT.format(variant=variant, name="max_abs_diff"): 3e-6,
        Fairness.MITIGATION_WORST_CLASS_RECALL_AFTER: 0.74,
    }
    tags = {verdict_tag(Verdict.FAIRNESS_ADJUSTED): "pass", verdict_tag(Verdict.onnx(variant)): "pass"}
    run = replace(plain, metrics=plain.metrics | exported, tags=plain.tags | tags)
    adjusted = adjusted_facts(run)
    assert adjusted is not None and adjusted.version is None
    assert adjusted.metrics[METRICS["accuracy"]] == 0.855 and adjusted.metrics[METRICS["worst_class_recall"]] == 0.74
    assert METRICS["accuracy_ci_low"] not in adjusted.metrics  # the plain model's interval is not the variant's
    assert adjusted.tags[TAGS["fairness"]] == "pass" and adjusted.overall == "pass"
    cfg = GateConfig(min_accuracy=0.85, min_worst_class_recall=0.7)
    assert evaluate_gate(run, None, cfg, model_name="m").verdict == "fail"
    assert evaluate_gate(adjusted, None, cfg, model_name="m").verdict == "pass"
    assert evaluate_gate(adjusted, None, GateConfig(min_accuracy=0.86), model_name="m").verdict == "fail"
    # a variant whose parity or accuracy cost is open does not pass in the plain file's place
    costly = adjusted_facts(replace(run, tags=run.tags | {verdict_tag(Verdict.onnx(variant)): "inconclusive"}))
    assert costly is not None and evaluate_gate(costly, None, cfg, model_name="m").verdict == "fail"

    record = evaluate_gate(run, None, cfg, model_name="m").as_dict() | {
        "alternative": {"variant": variant, "file": Export.ADJUSTED_FILE, "verdict": "pass", "reasons": []}
    }
    decision = decide(run_id=run.run_id, overall="inconclusive", gate=record, checks=[])
    assert decision.outcome == "do not ship" and "`model.adjusted.onnx` passes this gate" in decision.next_steps[0]
    assert "logit-adjusted variant (`model.adjusted.onnx`)" in gate_markdown(record)


def test_policy_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="min_acuracy"):
        GateConfig(min_acuracy=0.5)  # type: ignore[call-arg]


# ------------------------------------------------------------------------------ fabricated runs
STAGES = ("ingest", "train", "evaluate", "fairness", "transparency", "privacy", "export", "benchmark")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A work folder with an MLflow store and one small ONNX model logged as an MLflow model,
    which every fabricated run's export stage names (registration reads only that URI)."""
    import onnx
    from onnx import TensorProto, helper

    from auditflow.core.config import PipelineConfig
    from auditflow.core.tracking import Tracker, open_pipeline_run

    workdir = tmp_path_factory.mktemp("release")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, workdir / "model.onnx")
    ref = open_pipeline_run(PipelineConfig(), workdir, "model-holder", tags={})
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "export") as run:
        x = np.zeros((2, 3), np.float32)
        model_uri = run.log_onnx_model(
            workdir / "model.onnx",
            example_in=x,
            example_out={"logits": x},
            uri=ref.uri,
            providers=["CPUExecutionProvider"],
        )
    tracker.end_run(ref.run_id)
    return {"workdir": workdir, "uri": ref.uri, "model_uri": model_uri}


def fake_run(
    store: dict,
    name: str,
    accuracy: float = 0.86,
    digest: str = DIGEST,
    release: dict | None = None,
    right: np.ndarray | None = None,
):
    """A finished pipeline run with every stage's summary and the numbers the gate reads; with
    `right`, the evaluate stage's predictions too (right on exactly those test images), from
    which the gate decides its paired "vs champion" criteria."""
    from auditflow.core.config import PipelineConfig
    from auditflow.core.tracking import Tracker, open_pipeline_run

    ref = open_pipeline_run(PipelineConfig(), store["workdir"], name, tags={})
    tracker = Tracker(ref.uri)
    if release is not None:  # the `release` section the integrated config will record
        tracker.parent(ref).log_dict({**PipelineConfig().model_dump(mode="json"), "release": release}, "config.json")
    metrics = GOOD_METRICS | {METRICS["accuracy"]: accuracy}
    for stage in STAGES:
        with tracker.stage(ref, stage) as run:
            run.log_metrics({k: v for k, v in metrics.items() if k.startswith(f"{stage}/")})
            summary = {"model_uri": store["model_uri"]} if stage == "export" else {}
            run.log_summary(stage, summary | ({"device": "test cpu, 2 threads"} if stage == "benchmark" else {}))
            if stage == "evaluate" and right is not None:
                folder = store["workdir"] / ref.run_id
                folder.mkdir()
                labels = np.arange(len(right)) % 3
                run.log_artifact(planted_predictions(right, labels, 3).save(folder / "predictions.npz"), stage)
    parent = tracker.parent(ref)
    parent.log_metrics({METRICS["accuracy"]: accuracy, METRICS["worst_class_recall"]: 0.7})
    parent.set_tags(GOOD_TAGS | {TAGS["data_digest"]: digest})
    return ref


def aliases(store: dict, name: str) -> dict[str, tuple[str, ...]]:
    from auditflow.core.tracking import Tracker
    from auditflow.core.tracking.registry import ModelRegistry

    return {v.version: v.aliases for v in ModelRegistry(Tracker(store["uri"])).versions(name)}


def described(store: dict, name: str, version: str) -> str:
    from auditflow.core.tracking import Tracker

    return Tracker(store["uri"]).client.get_model_version(name, version).description or ""


def version_tags(store: dict, name: str, version: str) -> dict[str, str]:
    from auditflow.core.tracking import Tracker
    from auditflow.core.tracking.registry import ModelRegistry

    return ModelRegistry(Tracker(store["uri"])).version(name, version).tags


@pytest.mark.slow  # runs the release flow under the Prefect test server
def test_first_run_becomes_champion_and_a_worse_second_stays_candidate(prefect_harness, store: dict) -> None:
    from prefect import flow

    from auditflow.audits.release import GATE_JSON, list_models, read_gate_record
    from auditflow.core.tracking import Tracker
    from auditflow.tasks.release import release

    cfg = GateConfig(model_name="first-then-worse")

    @flow
    def step(ref):
        return release(ref, cfg)

    first_ref = fake_run(store, "good", accuracy=0.86)
    first = step(first_ref)
    assert first.promoted and first.version == "1" and first.previous_champion is None
    assert aliases(store, cfg.model_name) == {"1": ("champion",)}  # promotion takes `candidate` off it

    second_ref = fake_run(store, "one-epoch", accuracy=0.62)  # above the 0.5 floor
    second = step(second_ref)
    assert not second.promoted and second.verdict == "fail"
    assert second.champion_version == "1" and second.version == "2"
    assert aliases(store, cfg.model_name) == {"2": (), "1": ("champion",)}  # rejected: `candidate` is taken off
    assert version_tags(store, cfg.model_name, "2")["release/status"] == "rejected"
    assert described(store, cfg.model_name, "2").startswith("Rejected by the release gate on ")
    assert described(store, cfg.model_name, "1").startswith("Passed the release gate on ")
    assert version_tags(store, cfg.model_name, "1")["release/status"] == "champion"

    # the stored record says why, criterion by criterion
    record = read_gate_record(store["uri"], second_ref.run_id)
    assert record is not None and record["verdict"] == "fail" and record["failing"] == ["accuracy/regression"]
    assert record["champion"]["version"] == "1" and record["comparable"]
    assert record["reasons"] == [
        "Test accuracy vs champion: 0.62 vs champion v1's 0.86 (-0.24; allowed -0.01; not paired: "
        f"run {first_ref.run_id} logged no evaluate/predictions.npz)"
    ]
    run = Tracker(store["uri"]).get_run(second_ref.run_id)
    assert run.data.tags["verdict/release"] == "fail"
    assert run.data.metrics["release/criteria_fail"] == 1.0
    assert run.data.metrics["release/accuracy_vs_champion"] == pytest.approx(-0.24)
    assert Tracker(store["uri"]).get_run(first_ref.run_id).data.tags["verdict/release"] == "pass"
    artifacts = {f.path for f in Tracker(store["uri"]).client.list_artifacts(second_ref.run_id, "release")}
    assert artifacts == {GATE_JSON, "release/gate.md"}

    listed = list_models(store["uri"], cfg.model_name)[cfg.model_name]
    assert [(r.version.version, r.version.aliases, r.version.tags["verdict/release"]) for r in listed] == [
        ("2", (), "fail"),
        ("1", ("champion",), "pass"),
    ]
    assert listed[0].metrics[METRICS["accuracy"]] == pytest.approx(0.62)

    out = runner.invoke(app(), ["models", "--workdir", str(store["workdir"]), "--model-name", cfg.model_name])
    assert out.exit_code == 0, out.output
    assert "champion" in out.output and "rejected" in out.output


@pytest.mark.slow  # runs the release flow under the Prefect test server
def test_a_failure_after_promotion_rolls_back_to_the_previous_champion(prefect_harness, store: dict) -> None:
    """The flow's tasks in a transaction: the new version is registered, gated and promoted,
    then something fails. The hooks put `champion` back on v1; v2 keeps no alias and is tagged
    `release/status=rolled_back` (kept as evidence, not deleted)."""
    from prefect import flow
    from prefect.transactions import transaction

    from auditflow.core.tracking import Tracker
    from auditflow.tasks.release import gate_candidate, promote_champion, register_candidate, release

    cfg = GateConfig(model_name="rollback")

    @flow
    def good(ref):
        return release(ref, cfg)

    @flow
    def broken(ref):
        with transaction():
            candidate = register_candidate(ref, cfg.model_name)
            outcome = gate_candidate(ref, candidate, cfg)
            assert outcome.verdict == "pass"
            promote_champion(candidate, outcome.champion_version)
            assert aliases(store, cfg.model_name)["2"] == ("champion",)  # promoted, for the moment
            raise RuntimeError("tracking server went away")

    assert good(fake_run(store, "champion")).promoted
    ref = fake_run(store, "better", accuracy=0.9)
    with pytest.raises(RuntimeError, match="tracking server went away"):
        broken(ref)
    assert aliases(store, cfg.model_name) == {"2": (), "1": ("champion",)}
    assert version_tags(store, cfg.model_name, "2")["release/status"] == "rolled_back"
    assert version_tags(store, cfg.model_name, "1")["release/status"] == "champion"
    tags = Tracker(store["uri"]).get_run(ref.run_id).data.tags
    assert tags["release/outcome"] == "release rolled back: rollback v2 holds no alias"


def test_cli_promote_rolls_back_the_same_way(store: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """`promote_run` (the CLI's plain service, no Prefect) undoes its steps in reverse order:
    a failure after the alias moved puts it back."""
    from auditflow.audits import release as release_module
    from auditflow.core.tracking import RunLogger

    name = "cli-rollback"
    first = release_module.promote_run(store["uri"], fake_run(store, "a").run_id, [f"release.model_name={name}"])
    assert first.promoted and aliases(store, name) == {"1": ("champion",)}

    original = RunLogger.set_tags

    def fails_after_promotion(self, tags):
        if str(tags.get(release_module.OUTCOME_TAG, "")).startswith("champion:"):
            raise OSError("artifact store down")
        original(self, tags)

    monkeypatch.setattr(RunLogger, "set_tags", fails_after_promotion)
    with pytest.raises(OSError, match="artifact store down"):
        release_module.promote_run(store["uri"], fake_run(store, "b").run_id, [f"release.model_name={name}"])
    assert aliases(store, name) == {"2": (), "1": ("champion",)}
    assert version_tags(store, name, "2")["release/status"] == "rolled_back"


def app():
    from auditflow.cli import app as cli_app

    return cli_app


def test_cli_gate_on_an_unknown_run_is_one_line_and_exit_2(store: dict) -> None:
    out = runner.invoke(app(), ["gate", "0123abcd", "--workdir", str(store["workdir"])])
    assert out.exit_code == 2
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run id '0123abcd' not found in the MLflow store")
    out = runner.invoke(app(), ["gate", "0123abcd", "--workdir", str(store["workdir"]), "--set", "train.epochs=1"])
    assert out.exit_code == 2 and "gate and promote take only release.* overrides" in out.output


def test_cli_promote_of_a_failing_run_is_refused_with_the_reason(store: dict) -> None:
    workdir = str(store["workdir"])
    policy = {"model_name": "cli-refused"}
    good = fake_run(store, "good", release=policy)
    out = runner.invoke(app(), ["promote", good.run_id, "--workdir", workdir])
    assert out.exit_code == 0, out.output
    assert "cli-refused v1 is now champion" in out.output

    worse = fake_run(store, "worse", accuracy=0.5, release=policy)
    out = runner.invoke(app(), ["gate", worse.run_id, "--workdir", workdir])
    assert out.exit_code == 1 and "## Release gate: **fail**" in out.output  # a re-check moves nothing
    assert aliases(store, "cli-refused") == {"1": ("champion",)}

    out = runner.invoke(app(), ["promote", worse.run_id, "--workdir", workdir])
    assert out.exit_code == 2
    lines = out.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: promote refused: cli-refused v2 (run {worse.run_id}) fails the release gate:")
    assert "Test accuracy vs champion: 0.5 vs champion v1's 0.86" in lines[0]
    assert aliases(store, "cli-refused") == {"2": (), "1": ("champion",)}
    assert version_tags(store, "cli-refused", "2")["release/status"] == "rejected"

    # the same run passes a looser policy given on the command line
    out = runner.invoke(
        app(), ["promote", worse.run_id, "--workdir", workdir, "--set", "release.max_accuracy_drop=0.4"]
    )
    assert out.exit_code == 0, out.output
    assert "cli-refused v2 is now champion, replacing v1" in out.output
    assert aliases(store, "cli-refused") == {"2": ("champion",), "1": ()}
    assert version_tags(store, "cli-refused", "1")["release/status"] == "retired"


def test_the_gate_decides_accuracy_on_the_paired_test_of_the_two_runs(store: dict) -> None:
    """Both runs logged their predictions: the candidate breaks 30 of the champion's right images
    and fixes 10 of its wrong ones (of 300). Its accuracy is 6.7 points lower; the exact
    interval of the difference is -0.1417 to -0.0121: below -0.01 entirely (fail), straddling
    -0.05 (inconclusive: the gate does not pass), above -0.15 (pass)."""
    from auditflow.audits.release import gate_run, read_gate_record

    name = "paired-gate"
    champion_right = np.arange(300) >= 60  # wrong on 60, right on 240
    candidate_right = champion_right.copy()
    candidate_right[:10] = True  # fixed
    candidate_right[60:90] = False  # broken
    release = {"model_name": name}
    champion = fake_run(store, "champion", accuracy=0.8, release=release, right=champion_right)
    assert release_promote(store, champion.run_id).promoted
    candidate = fake_run(store, "candidate", accuracy=220 / 300, release=release, right=candidate_right)
    for drop, verdict, status in ((0.01, "fail", "fail"), (0.05, "fail", "inconclusive"), (0.15, "pass", "pass")):
        # worst-class recall is decided on its class's 100 images: allow it all, to see accuracy alone
        policy = [f"release.max_accuracy_drop={drop}", "release.max_worst_class_recall_drop=1"]
        outcome = gate_run(store["uri"], candidate.run_id, policy, log_record=True)
        assert outcome.verdict == verdict, outcome.reasons
        record = read_gate_record(store["uri"], candidate.run_id)
        found = next(c for c in record["criteria"] if c["key"] == "accuracy/regression")
        assert found["status"] == status and found["interval"] == pytest.approx([-0.14171, -0.01213], abs=1e-5)
        assert "paired on the same 300 test images: -0.06667, 0.95 interval -0.1417 to -0.01213" in found["reason"]
        assert "(+10/-30 discordant, McNemar p=0.0022)" in found["reason"]
    assert aliases(store, name) == {"1": ("champion",)}  # gate moves nothing


def release_promote(store: dict, run_id: str):
    from auditflow.audits.release import promote_run

    return promote_run(store["uri"], run_id)


@pytest.mark.parametrize("trained", [False, True])
def test_promote_of_a_run_without_a_model_gives_advice_that_leads_somewhere(store: dict, trained: bool) -> None:
    """Issue 18: `promote` on a FAILED run said "export it with `auditflow bench ID`", which
    then failed with "has no ingest summary". A run that finished training is exported by
    `bench`; one that did not is rerun, and the advice gives the command."""
    from auditflow.core.config import load_config
    from auditflow.core.tracking import Tracker, open_pipeline_run

    ref = open_pipeline_run(
        load_config("quick"), store["workdir"], "no-model", tags={"auditflow.source": "/data/toy.tar"}
    )
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "ingest") as run:
        run.log_summary("ingest", {"snapshot": str(store["workdir"] / "snapshot")})
    if trained:
        with tracker.stage(ref, "train"):
            pass
    else:
        with pytest.raises(RuntimeError), tracker.stage(ref, "train"):
            raise RuntimeError("killed mid-epoch")
    tracker.end_run(ref.run_id, None if trained else RuntimeError("training failed"))
    out = runner.invoke(app(), ["promote", ref.run_id, "--workdir", str(store["workdir"])])
    assert out.exit_code == 2
    said = " ".join(out.output.split())  # the one line, as rich may wrap it
    line = said[said.index("error: ") :]  # after the transaction's rollback log records
    assert line.startswith(f"error: run {ref.run_id} has no finished export stage with a logged ONNX model")
    if trained:
        assert f"export its trained model with `auditflow bench {ref.run_id}`, then promote it" in line
    else:
        assert "it ended FAILED before training finished, so there is no model to export" in line
        assert "rerun the pipeline (`auditflow run --profile quick --data /data/toy.tar`" in line
        assert "auditflow bench" not in line


def test_cli_promote_waive_records_who_and_why_and_the_gate_honours_it(store: dict, tmp_path) -> None:
    """Issue 19: a run whose fairness check the data could not settle. The gate refuses it;
    `promote --waive fairness` records the waiver (MLflow tags and `release/waivers.json`), the
    gate then passes it as `waived` and a re-run of `gate` honours it. The audit verdict itself is
    not changed. (test_cli runs the same on a real run, whose rebuilt report shows the waiver.)"""
    from auditflow.core.tracking import Tracker

    workdir = str(store["workdir"])
    run = fake_run(store, "open-fairness", release={"model_name": "cli-waived"})
    tracker = Tracker(store["uri"])
    tracker.parent(run).set_tags({TAGS["fairness"]: "inconclusive"})
    out = runner.invoke(app(), ["promote", run.run_id, "--workdir", workdir])
    assert out.exit_code == 2 and "Fairness verdict: inconclusive (required: pass)" in out.output

    out = runner.invoke(app(), ["promote", run.run_id, "--workdir", workdir, "--waive", "privacy", "--reason", "x"])
    assert out.exit_code == 2
    assert out.output.strip() == (
        "error: --waive 'privacy': the check is pass, and only an inconclusive check can be waived (a fail is a "
        "measured fault); the inconclusive ones are: fairness"
    )
    why = "all 1,000 test images per class are in the split; the 0.19 gap is accepted by the fairness board"
    args = ["promote", run.run_id, "--workdir", workdir, "--waive", "fairness", "--reason", why, "--by", "A. Reviewer"]
    out = runner.invoke(app(), args)
    assert out.exit_code == 0, out.output
    assert f"waived fairness (inconclusive) as A. Reviewer: {why}" in out.output
    assert "cli-waived v1 is now champion" in out.output and "1 waived" in out.output

    tags = tracker.get_run(run.run_id).data.tags
    stored = json.loads(tags["release/waiver/fairness"])
    assert (stored["by"], stored["reason"], stored["verdict"]) == ("A. Reviewer", why, "inconclusive")
    assert tags[TAGS["fairness"]] == "inconclusive"  # the audit's answer stands
    files = Path(tracker.client.download_artifacts(run.run_id, "release", str(tmp_path)))
    assert [w["check"] for w in json.loads((files / "waivers.json").read_text())] == ["fairness"]
    gate = json.loads((files / "gate.json").read_text())
    assert gate["verdict"] == "pass" and gate["waivers"][0]["by"] == "A. Reviewer"
    assert {c["key"]: c["status"] for c in gate["criteria"]}["fairness/verdict"] == "waived"

    # a fabricated run has no data to draw: the report is not rebuilt, and the command says so
    assert f"report not rebuilt (KeyError: 'confusion'); `auditflow report {run.run_id}` tries again" in out.output

    out = runner.invoke(app(), ["gate", run.run_id, "--workdir", workdir])  # a re-check honours it
    assert out.exit_code == 0 and "**waived**" in out.output, out.output


def test_cli_promote_variant_adjusted_ships_the_mitigated_file_the_gate_passes(store: dict, tmp_path) -> None:
    """Issue 19: a run whose plain model's fairness is inconclusive, and whose logit-adjusted
    variant passes fairness and its own checks. The pipeline's gate names the variant as the
    way forward (gate.json `alternative`); `promote` of the plain file is refused, and `promote
    --variant adjusted` registers the adjusted file as its own version (tagged so) and makes it
    champion; the gate record says which file it judged."""
    from auditflow.audits.release import gate_run
    from auditflow.core.names import Export, Fairness, Verdict, verdict_tag
    from auditflow.core.tracking import Tracker

    workdir, variant = str(store["workdir"]), Verdict.ADJUSTED_VARIANT
    run = fake_run(store, "adjusted", release={"model_name": "cli-adjusted"})
    tracker = Tracker(store["uri"])
    export = tracker.load_run(run.run_id).stage_run_ids["export"]
    tracker.client.log_dict(export, {"model_uri": store["model_uri"], "adjusted_model_uri": store["model_uri"]},
                            "export/summary.json")  # fmt: skip
    tracker.parent(run).set_tags(
        {
            TAGS["fairness"]: "inconclusive",
            verdict_tag(Verdict.FAIRNESS_ADJUSTED): "pass",
            verdict_tag(Verdict.onnx(variant)): "pass",
        }
    )
    tracker.parent(run).log_metrics(
        {
            Export.VARIANT.format(variant=variant, name="accuracy"): 0.855,
            Export.VARIANT.format(variant=variant, name="max_abs_diff"): 3e-6,
            Fairness.MITIGATION_WORST_CLASS_RECALL_AFTER: 0.74,
        }
    )
    judged = gate_run(store["uri"], run.run_id)
    assert judged.verdict == "fail" and "logit-adjusted variant (`model.adjusted.onnx`)" in judged.markdown
    assert "judged by the same criteria in the plain file's place" in judged.markdown and "**pass**" in judged.markdown

    out = runner.invoke(app(), ["promote", run.run_id, "--workdir", workdir])
    assert out.exit_code == 2 and "Fairness verdict: inconclusive (required: pass)" in out.output
    out = runner.invoke(app(), ["promote", run.run_id, "--workdir", workdir, "--variant", "adjusted"])
    assert out.exit_code == 0, out.output
    assert "cli-adjusted v2 (the adjusted variant) is now champion" in out.output
    assert aliases(store, "cli-adjusted") == {"2": ("champion",), "1": ()}
    assert version_tags(store, "cli-adjusted", "2")["auditflow.variant"] == "adjusted"
    assert "auditflow.variant" not in version_tags(store, "cli-adjusted", "1")
    files = Path(tracker.client.download_artifacts(run.run_id, "release", str(tmp_path)))
    gate = json.loads((files / "gate.json").read_text())
    assert gate["candidate"]["variant"] == "adjusted" and gate["verdict"] == "pass"
    assert {c["key"]: c["value"] for c in gate["criteria"]}["worst_class_recall/minimum"] == 0.74

    out = runner.invoke(app(), ["promote", run.run_id, "--workdir", workdir, "--variant", "fp16"])
    assert out.exit_code == 2 and "'fp16' is not one of 'adjusted'" in out.output
