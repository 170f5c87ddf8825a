"""Release gate: may this run's model replace the current champion?

A candidate is judged on absolute criteria (its own numbers against policy thresholds) and,
when a champion exists and was tested on the same test split, on allowed regressions against
the champion: accuracy, worst-class recall, the fairness verdict, the privacy attack's TPR at
low FPR, ONNX parity and latency, plus the run's overall audit verdict. The result is a
`GateRecord`: every criterion with its condition, value, threshold, status and a link to the
evidence, and a run-vs-champion comparison table; JSON-serialisable (`as_dict`) and rendered
to Markdown (`gate_markdown`, template `gate.md.j2`). The record and its rendering live in
`auditflow.audits.gate_record` and are re-exported here.

Against the champion, accuracy, worst-class recall and the attack's TPR are decided by paired
tests on the same images (`auditflow.audits.compare`, which `auditflow compare` shows): the
criterion passes when the interval of candidate - champion lies entirely within the allowance
(above -allowance for accuracy and recall, below +allowance for the TPR), fails when it lies
entirely beyond it, and is `inconclusive` when it straddles it. Worst-class recall is judged on
the candidate's worst class: its recall against the champion's recall of the same class, on the
same images, with the per-class intervals simultaneous over the classes. Where the paired
evidence is missing (runs logged before the comparison, a run that logged no attack scores, or
audits of different points) the criterion falls back to the raw difference of the two logged
numbers and says so ("not paired: ..."). ONNX parity and latency stay raw (a maximum and a
ratio, not shares of images).

Pure: runs are passed in as `RunFacts` (numbers and tags read back from MLflow by the caller,
see `facts_from_record`), the paired evidence as a `Comparison`. A missing number is never a
pass: its criterion is `inconclusive`, and the gate passes only when every criterion passes or
is skipped (no champion, another test split, other benchmark hardware).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from auditflow.audits.compare import Comparison, PairedDifference
from auditflow.audits.gate_record import PASSING, Criterion, GateRecord
from auditflow.audits.gate_record import SCHEMA as SCHEMA
from auditflow.audits.gate_record import gate_markdown as gate_markdown
from auditflow.audits.waivers import Waiver, held
from auditflow.core.checks import SEVERITY, condition_text, judge, worst
from auditflow.core.config import ReleaseConfig as GateConfig
from auditflow.core.names import (
    VERDICT_PREFIX,
    Benchmark,
    Evaluate,
    Export,
    Fairness,
    Privacy,
    Verdict,
    gating_verdicts,
    verdict_tag,
)
from auditflow.core.tracking import RunRecord, run_url

# Every MLflow name the gate reads, in one place (stage runs' metrics are merged under the
# parent's, see `facts_from_record`). `latency_ms` is filled in with the configured backend and
# batch size.
METRICS: dict[str, str] = {
    "accuracy": Evaluate.TEST_ACCURACY_NO_TTA,  # the shipped model, 0..1, higher is better
    "accuracy_ci_low": Evaluate.TEST_ACCURACY_NO_TTA_CI_LOW,
    "accuracy_ci_high": Evaluate.TEST_ACCURACY_NO_TTA_CI_HIGH,
    "worst_class_recall": Fairness.WORST_CLASS_RECALL,  # 0..1, higher is better
    "privacy_tpr": Privacy.STRONGEST_TPR_AT_VERDICT_FPR,  # 0..1, lower is better; chance = the FPR
    "privacy_tpr_ci_high": Privacy.STRONGEST_TPR_AT_VERDICT_FPR_CI_HIGH,
    "onnx_max_abs_diff": Export.PARITY_MAX_ABS_DIFF,  # logits, lower is better, 0 ideal
    # median, lower is better; a template: `latency_metric` fills in the backend and batch size
    "latency_ms": Benchmark.RESULT.format(backend="{backend}", batch_size="{batch_size}", name="p50_ms"),
}
TAGS: dict[str, str] = {
    "fairness": verdict_tag(Verdict.FAIRNESS),
    "privacy": verdict_tag(Verdict.PRIVACY),
    "transparency": verdict_tag(Verdict.TRANSPARENCY),
    "onnx_parity": verdict_tag(Verdict.ONNX_PARITY),
    "overall": verdict_tag(Verdict.OVERALL),
    "release": verdict_tag(Verdict.RELEASE),  # what this gate sets; not an input of the overall verdict here
    "data_digest": "auditflow.data_digest",
    "strongest_attack": Privacy.STRONGEST_ATTACK,  # the attack whose TPR `privacy_tpr` is
    "benchmark_cpu": Benchmark.CPU,
}
# Where the evidence of each group lives: stage run (linked in the MLflow UI), report section.
EVIDENCE: dict[str, tuple[str, str]] = {
    "accuracy": ("evaluate", "#which-accuracy-is-which"),
    "worst_class_recall": ("fairness", "#fairness"),
    "fairness": ("fairness", "#fairness"),
    "privacy": ("privacy", "#privacy"),
    "transparency": ("transparency", "#transparency"),
    "onnx_parity": ("export", "#onnx-export"),
    "latency": ("benchmark", "#inference-benchmark"),
    "overall": ("parent", "#checks"),
}


def _key(group: str, check: str) -> str:
    """A criterion's key in the gate record (`privacy/regression`): group, then check."""
    return f"{group}/{check}"


ACCEPTED = {"pass": "pass", "inconclusive": "pass or inconclusive"}  # weakest verdict -> in words
_EPS = 1e-12  # float slack so that a value exactly at its bound passes (0.8 - 0.01 vs 0.79)
KINDS = ("verdict", "absolute", "regression")  # order of a group's criteria in the record
# The criteria, each keyed `<group>/<check>` (`EVIDENCE` lists the groups). Policy fields name
# `GateConfig` fields; metric names are `METRICS` keys.
# (key, title, metric, what it is, policy field with the bound, higher is better)
BOUNDS = (
    ("accuracy/minimum", "Test accuracy", "accuracy", "test accuracy (shipped model)", "min_accuracy", True),
    (
        "worst_class_recall/minimum",
        "Worst-class recall",
        "worst_class_recall",
        "lowest per-class recall",
        "min_worst_class_recall",
        True,
    ),
    (
        _key(Verdict.PRIVACY, "tpr_bound"),
        "Membership attack TPR at low FPR",
        "privacy_tpr_ci_high",
        "upper interval bound of the strongest attack's TPR at the verdict FPR",
        "max_privacy_tpr",
        False,
    ),
    (
        "onnx_parity/max_abs_diff",
        "ONNX parity",
        "onnx_max_abs_diff",
        "largest ONNX-vs-torch logit difference",
        "max_onnx_abs_diff",
        False,
    ),
    ("latency/maximum", "Latency", "latency_ms", "median latency (ms)", "max_latency_ms", False),
)
# (key, metric, what it is, policy field with the allowance, higher is better, allowance is a ratio)
REGRESSIONS = (
    ("accuracy/regression", "accuracy", "test accuracy", "max_accuracy_drop", True, False),
    (
        "worst_class_recall/regression",
        "worst_class_recall",
        "worst-class recall",
        "max_worst_class_recall_drop",
        True,
        False,
    ),
    (
        _key(Verdict.PRIVACY, "regression"),
        "privacy_tpr",
        "attack TPR at the verdict FPR",
        "max_privacy_tpr_increase",
        False,
        False,
    ),
    (
        "onnx_parity/regression",
        "onnx_max_abs_diff",
        "ONNX logit difference",
        "max_onnx_abs_diff_increase",
        False,
        False,
    ),
    ("latency/regression", "latency_ms", "median latency", "max_latency_ratio", False, True),
)
# The regressions decided on a paired test when there is paired evidence (`_paired`)
PAIRED = ("accuracy/regression", "worst_class_recall/regression", _key(Verdict.PRIVACY, "regression"))
# (key, title, `TAGS` key, weakest verdict accepted: a policy field or the verdict itself)
VERDICTS = (
    (_key(Verdict.FAIRNESS, "verdict"), "Fairness verdict", "fairness", "min_fairness_verdict"),
    (_key(Verdict.PRIVACY, "verdict"), "Privacy verdict", "privacy", "pass"),
    (_key(Verdict.TRANSPARENCY, "verdict"), "Transparency verdict (shortcut check)", "transparency", "pass"),
    ("onnx_parity/verdict", "ONNX parity verdict", "onnx_parity", "pass"),
)


def latency_metric(cfg: GateConfig) -> str:
    """The benchmark metric whose latency is gated: median ms of the configured backend and batch."""
    return METRICS["latency_ms"].format(backend=cfg.latency_backend, batch_size=cfg.latency_batch_size)


# ---------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class RunFacts:
    """What the gate reads about one pipeline run."""

    run_id: str
    metrics: dict[str, float]  # parent metrics over the stage runs' metrics
    tags: dict[str, str]  # parent tags, plus `stage/...` tags of the stage runs
    overall: str | None  # the audits' overall verdict (without the release gate); None unknown
    test_split: str  # identity of the test split; "" when the run does not record it
    hardware: str = ""  # where the benchmark ran; "" when unknown
    url: str = ""  # the run in the MLflow UI
    links: dict[str, str] = field(default_factory=dict)  # stage -> its run in the MLflow UI
    version: str | None = None  # registered model version, when it has one
    waivers: tuple[Waiver, ...] = ()  # the accepted inconclusive checks that still apply (`audits.waivers`)

    def waiver(self, group: str) -> Waiver | None:
        return next((w for w in self.waivers if w.check == group), None)


def split_identity(digest: str | None, params: dict[str, str]) -> str:
    """Identity of a run's test split: the snapshot digest, plus the seeded per-class cap when
    one subsamples the test images (`data.*` params; see `auditflow.core.data.make_splits`)."""
    if not digest:
        return ""
    cap = params.get("data.max_test_per_class", "None")
    if cap in ("None", ""):
        return f"snapshot {digest[:16]}, all test images"
    # the cap draws from the rng after the train cap, so both caps and the seed fix the sample
    return (
        f"snapshot {digest[:16]}, test capped at {cap} per class "
        f"(seed {params.get('data.seed', '?')}, train cap {params.get('data.max_train_per_class', '?')})"
    )


def facts_from_record(record: RunRecord, ui_url: str | None = None, version: str | None = None) -> RunFacts:
    """`RunFacts` of a run read back by `Tracker.load_run`. The overall verdict is recomputed
    from the stage verdicts without `verdict/release` (and without a stored `verdict/overall`
    that may already include it), so re-gating a run never judges the gate's own earlier answer."""
    from auditflow.audits.report import overall_verdict

    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for stage, values in record.stage_metrics.items():
        metrics.update(values)
        tags.update({k: v for k, v in record.stage_tags.get(stage, {}).items() if k.startswith(f"{stage}/")})
    metrics.update(record.metrics)
    tags.update(record.tags)
    own = {k: v for k, v in record.tags.items() if k not in (TAGS["overall"], TAGS["release"])}
    waivers = held(own)
    # a waived check counts for the gate as settled: the overall criterion leaves it out
    own = {k: v for k, v in own.items() if k.removeprefix(VERDICT_PREFIX) not in waivers}
    overall = overall_verdict(replace(record, tags=own))
    if record.status in ("FAILED", "KILLED"):
        overall = "fail"
    device = (record.summaries.get("benchmark") or {}).get("device") or tags.get(TAGS["benchmark_cpu"], "")
    ui = ui_url or record.config.get("tracking", {}).get("ui_url")
    links = {
        stage: run_url(record.uri, record.experiment_id, run_id, ui_url=ui)
        for stage, run_id in record.stage_run_ids.items()
    }
    return RunFacts(
        run_id=record.run_id,
        metrics=metrics,
        tags=tags,
        overall=overall,
        test_split=split_identity(record.tags.get(TAGS["data_digest"]), record.params),
        hardware=str(device),
        url=run_url(record.uri, record.experiment_id, record.run_id, ui_url=ui),
        links=links,
        version=version,
        waivers=tuple(waivers.values()),
    )


def adjusted_facts(facts: RunFacts) -> RunFacts | None:
    """The run as its logit-adjusted ONNX variant (`model.adjusted.onnx`) would stand before the
    gate in the plain file's place, or None when the run exported none: that file's accuracy (no
    interval: the accuracy criterion reads the point value), the worst-class recall after the
    adjustment, its fairness verdict (`fairness_adjusted`), its file's largest logit difference
    for the parity bound, and the overall verdict with its file's own checks (`onnx_adjusted`:
    parity and accuracy cost) and its fairness in place of the plain model's. Privacy carries
    over: the offsets are tuned on validation images, never on the training members, so the
    adjusted outputs are a fixed post-processing of the audited ones."""
    variant = Verdict.ADJUSTED_VARIANT
    fair = facts.tags.get(verdict_tag(Verdict.FAIRNESS_ADJUSTED))
    exported = facts.tags.get(verdict_tag(Verdict.onnx(variant)))
    if fair is None or exported is None:
        return None

    def value(metric: str) -> float:
        return facts.metrics.get(metric, math.nan)

    interval = (METRICS["accuracy_ci_low"], METRICS["accuracy_ci_high"])
    metrics = {k: v for k, v in facts.metrics.items() if k not in interval} | {
        METRICS["accuracy"]: value(Export.VARIANT.format(variant=variant, name="accuracy")),
        METRICS["worst_class_recall"]: value(Fairness.MITIGATION_WORST_CLASS_RECALL_AFTER),
        METRICS["onnx_max_abs_diff"]: value(Export.VARIANT.format(variant=variant, name="max_abs_diff")),
    }
    replaced = {Verdict.FAIRNESS: fair, Verdict.onnx(Verdict.SHIPPED_VARIANT): exported}
    plain = {g: s for g, s in gating_verdicts(facts.tags).items() if not facts.waiver(g)}
    # a fail the gating verdicts do not explain (the run failed, a stage is missing) stays a fail
    base = "fail" if facts.overall == "fail" and worst(plain.values()) != "fail" else "pass"
    overall = worst([base, *(plain | replaced).values()]) if facts.overall is not None else None
    tags = facts.tags | {TAGS["fairness"]: fair}
    waivers = tuple(w for w in facts.waivers if w.check not in replaced)  # the plain model's, not its
    return replace(facts, metrics=metrics, tags=tags, overall=overall, version=None, waivers=waivers)


# ---------------------------------------------------------------------------- criteria
def _number(facts: RunFacts | None, metric: str) -> float | None:
    value = facts.metrics.get(metric) if facts is not None else None
    return None if value is None or not math.isfinite(value) else float(value)


def _missing(name: str, facts: RunFacts, whose: str = "this run") -> str:
    return f"`{name}` is not logged on {whose} ({facts.run_id[:8]}); a missing value is not a pass"


def _criterion(facts: RunFacts, key: str, kind: str, **fields: Any) -> Criterion:
    group = key.split("/")[0]
    stage, anchor = EVIDENCE[group]
    defaults: dict[str, Any] = {"threshold": None, "champion": None}
    return Criterion(
        key=key,
        group=group,
        kind=kind,
        evidence=facts.links.get(stage, facts.url),
        anchor=anchor,
        **(defaults | fields),
    )


def _minimum(facts: RunFacts, key: str, title: str, metric: str, what: str, bound: float, higher: bool) -> Criterion:
    """The run's own `metric` against a policy bound (reaching the bound passes)."""
    value = _number(facts, metric)
    status = judge(value, bound, higher_is_better=higher)
    if value is None:
        reason = _missing(metric, facts)
    else:
        sign = ("≥" if higher else "≤") if status == "pass" else ("<" if higher else ">")
        reason = f"{value:.4g} {sign} {bound:g}"
    return _criterion(
        facts,
        key,
        "absolute",
        title=title,
        condition=condition_text(what, bound, higher_is_better=higher),
        metric=metric,
        value=value,
        threshold=bound,
        status=status,
        reason=reason,
    )


def _unjudged(
    base: Criterion, cand: RunFacts, champ: RunFacts | None, skip: str, name: str, value: Any, reference: Any
) -> Criterion | None:
    """A regression criterion that cannot be judged: skipped (no comparable champion), or
    inconclusive (a side did not log `name`); None when both values are there."""
    if skip or champ is None:
        return base
    if value is None:
        return replace(base, status="inconclusive", reason=_missing(name, cand))
    if reference is None:
        return replace(base, status="inconclusive", reason=_missing(name, champ, f"champion v{champ.version}"))
    return None


def _paired(key: str, cand: RunFacts, paired: Comparison | None, unpaired: str) -> tuple[PairedDifference | None, str]:
    """The paired difference regression `key` is decided on and what it is measured on, or
    (None, why there is none)."""
    if paired is None:
        return None, unpaired
    if key == "accuracy/regression":
        return paired.accuracy, f"the same {paired.n_test} test images"
    if key == "worst_class_recall/regression":
        row = paired.worst_class_of_b()
        if row is None or row.recall is None:
            return None, "no class has test images"
        return row.recall, (
            f"class {row.name!r} (this run's worst), its {row.recall.n} test images; "
            f"simultaneous over {len(paired.classes)} classes"
        )
    attack = cand.tags.get(TAGS["strongest_attack"])
    row = paired.attack(attack) if attack else None
    if row is None:
        return None, paired.attacks_note or f"this run's strongest attack ({attack or 'not recorded'}) was not compared"
    if row.tpr is None:
        return None, row.note
    return row.tpr, f"the {attack} attack at {row.verdict_fpr:g} FPR, the same {row.tpr.n} members"


def _decide(diff: PairedDifference, allowance: float, higher: bool) -> str:
    """pass: the interval of candidate - champion lies within the allowance; fail: beyond it;
    inconclusive: it straddles it."""
    if higher:
        if diff.low >= -allowance - _EPS:
            return "pass"
        return "fail" if diff.high < -allowance else "inconclusive"
    if diff.high <= allowance + _EPS:
        return "pass"
    return "fail" if diff.low > allowance else "inconclusive"


def _regression(
    cand: RunFacts,
    champ: RunFacts | None,
    skip: str,
    key: str,
    metric: str,
    what: str,
    allowance: float,
    higher: bool,
    ratio: bool = False,
    *,
    paired: Comparison | None = None,
    unpaired: str = "",
) -> Criterion:
    """Candidate vs champion on `metric`: at most `allowance` worse, as a difference in the
    metric's unit, or with `ratio` as a factor on the champion's value (lower is better).
    Accuracy, worst-class recall and the attack's TPR are decided on the paired interval of
    `paired` when it holds one (module docstring), else on the raw difference."""
    if ratio:
        condition = f"{what} at most {allowance:g} x the champion's"
    else:
        condition = f"{what} at most {allowance:g} {'below' if higher else 'above'} the champion's"
    value = _number(cand, metric)
    reference = _number(champ, metric)
    base = _criterion(
        cand,
        key,
        "regression",
        title=f"{what[0].upper()}{what[1:]} vs champion",
        condition=condition,
        metric=metric,
        value=value,
        champion=reference,
        status="skipped",
        reason=skip,
    )
    early = _unjudged(base, cand, champ, skip, metric, value, reference)
    if early is not None:
        return early
    if ratio:
        bound = reference * allowance
        ok = value <= bound + _EPS
        change = f"{value / reference:.3g}x" if reference > 0 else "n/a"
        reason = f"{value:.4g} vs champion v{champ.version}'s {reference:.4g} ({change}; allowed {allowance:g}x)"
        return replace(base, threshold=bound, status="pass" if ok else "fail", reason=reason)
    bound = reference - allowance if higher else reference + allowance
    allowed = f"allowed {'-' if higher else '+'}{allowance:g}"
    said = f"{value:.4g} vs champion v{champ.version}'s {reference:.4g}"
    diff, on = _paired(key, cand, paired, unpaired) if key in PAIRED else (None, "")
    if diff is None:
        ok = value >= bound - _EPS if higher else value <= bound + _EPS
        not_paired = f"; not paired: {on}" if key in PAIRED else ""
        reason = f"{said} ({value - reference:+.4g}; {allowed}{not_paired})"
        return replace(base, threshold=bound, status="pass" if ok else "fail", reason=reason)
    status = _decide(diff, allowance, higher)
    reason = (
        f"{said}; paired on {on}: {diff.difference:+.4g}, {diff.level:.4g} interval {diff.low:+.4g} to "
        f"{diff.high:+.4g} (+{diff.fixed}/-{diff.broken} discordant, McNemar p={diff.p_value:.2g}); {allowed}"
        + ("; the interval straddles it" if status == "inconclusive" else "")
    )
    return replace(base, threshold=bound, status=status, reason=reason, interval=(diff.low, diff.high))


def _verdict(
    facts: RunFacts, key: str, title: str, tag: str, weakest: str, value: str | None = None, source: str = ""
) -> Criterion:
    """A verdict of the run must be `weakest` or better (pass, then inconclusive, then fail);
    `value` and `source` when it is not read from tag `tag` itself."""
    found = value if source else facts.tags.get(tag)
    accepted = ACCEPTED[weakest]
    if found is None:
        status, reason = "inconclusive", _missing(tag, facts)
    elif SEVERITY.get(found, SEVERITY["fail"]) <= SEVERITY[weakest]:
        status, reason = "pass", found
    else:
        status, reason = "fail", f"{found} (required: {accepted})"
    return _criterion(
        facts,
        key,
        "verdict",
        title=title,
        condition=f"`{tag}`{source} is {accepted}",
        metric=tag,
        value=found,
        threshold=weakest,
        status=status,
        reason=reason,
    )


def _waived(criterion: Criterion, facts: RunFacts) -> Criterion:
    """A criterion of a waived check's group that is open passes as `waived`: an inconclusive
    one (`privacy/tpr_bound` when `privacy` is waived: the same open question), or a verdict
    criterion that failed only because the verdict is `inconclusive`. Anything else, a measured
    fail above all, is left as it is."""
    waiver = facts.waiver(criterion.group)
    if waiver is None:
        return criterion
    if criterion.kind == "verdict" and criterion.value == "inconclusive" and criterion.status == "fail":
        return replace(criterion, status="waived", reason=f"inconclusive, {waiver.line()}")
    if criterion.status == "inconclusive":
        return replace(criterion, status="waived", reason=f"{criterion.reason}; {waiver.line()}")
    return criterion


def _verdict_regression(cand: RunFacts, champ: RunFacts | None, skip: str, key: str, tag: str, title: str) -> Criterion:
    value = cand.tags.get(tag)
    reference = champ.tags.get(tag) if champ is not None else None
    base = _criterion(
        cand,
        key,
        "regression",
        title=title,
        condition=f"`{tag}` no worse than the champion's (pass, then inconclusive, then fail)",
        metric=tag,
        value=value,
        threshold=reference,
        champion=reference,
        status="skipped",
        reason=skip,
    )
    early = _unjudged(base, cand, champ, skip, tag, value, reference)
    if early is not None:
        return early
    worse = SEVERITY.get(value, SEVERITY["fail"]) > SEVERITY.get(reference, SEVERITY["fail"])
    return replace(
        base, status="fail" if worse else "pass", reason=f"{value} vs champion v{champ.version}'s {reference}"
    )


def comparability(cand: RunFacts, champ: RunFacts | None) -> tuple[bool, str]:
    """Whether the regression criteria apply, and why (not)."""
    if champ is None:
        return False, "no champion yet: regression criteria skipped"
    if champ.run_id == cand.run_id:
        return False, f"this run is the champion (v{champ.version}): regression criteria skipped"
    if not cand.test_split or not champ.test_split:
        whose = "this run" if not cand.test_split else f"champion v{champ.version}"
        return False, f"not comparable: {whose} records no test-split digest; regression criteria skipped"
    if cand.test_split != champ.test_split:
        return False, (
            f"not comparable: champion v{champ.version} was tested on another test split "
            f"({champ.test_split}; this run: {cand.test_split}); regression criteria skipped"
        )
    return True, f"comparable: same test split as champion v{champ.version} ({cand.test_split})"


def _comparison(cand: RunFacts, champ: RunFacts | None, cfg: GateConfig) -> tuple[dict[str, Any], ...]:
    """Run vs champion, number by number (shown whether or not the runs are comparable)."""
    rows: list[dict[str, Any]] = []
    numbers = (
        ("Test accuracy (shipped model)", METRICS["accuracy"], "higher"),
        ("Test accuracy, interval low", METRICS["accuracy_ci_low"], "higher"),
        ("Test accuracy, interval high", METRICS["accuracy_ci_high"], "higher"),
        ("Worst-class recall", METRICS["worst_class_recall"], "higher"),
        ("Attack TPR at the verdict FPR", METRICS["privacy_tpr"], "lower"),
        ("Attack TPR, interval high", METRICS["privacy_tpr_ci_high"], "lower"),
        ("ONNX max logit difference", METRICS["onnx_max_abs_diff"], "lower"),
        (f"Median latency, {cfg.latency_backend} batch {cfg.latency_batch_size} (ms)", latency_metric(cfg), "lower"),
    )
    for title, metric, better in numbers:
        a, b = _number(cand, metric), _number(champ, metric)
        diff = a - b if a is not None and b is not None else None
        rows.append(
            {"title": title, "metric": metric, "candidate": a, "champion": b, "difference": diff, "better": better}
        )
    for title, name in (
        ("Fairness verdict", "fairness"),
        ("Privacy verdict", "privacy"),
        ("ONNX parity verdict", "onnx_parity"),
        ("Overall audit verdict", "overall"),
    ):
        tag = TAGS[name]
        a = cand.overall if name == "overall" else cand.tags.get(tag)
        b = None if champ is None else (champ.overall if name == "overall" else champ.tags.get(tag))
        rows.append(
            {"title": title, "metric": tag, "candidate": a, "champion": b, "difference": None, "better": "pass"}
        )
    return tuple(rows)


def _side(facts: RunFacts) -> dict[str, Any]:
    return {
        "run_id": facts.run_id,
        "version": facts.version,
        "url": facts.url,
        "test_split": facts.test_split,
        "hardware": facts.hardware,
    }


# ---------------------------------------------------------------------------- the gate
def evaluate_gate(
    candidate: RunFacts,
    champion: RunFacts | None,
    cfg: GateConfig,
    *,
    model_name: str,
    now: datetime | None = None,
    paired: Comparison | None = None,
    unpaired: str = "no paired evidence was given",
) -> GateRecord:
    """Judge `candidate` against the policy `cfg` and against `champion` (None when there is
    none). `paired`: candidate (B) vs champion (A) on the same images (`compare`), which decides
    the accuracy, worst-class recall and privacy regressions; without it they are judged on the
    raw differences and say why (`unpaired`). The verdict is `pass` only when every criterion
    passes or is skipped."""
    if paired is not None and (paired.run_a, paired.run_b) != (champion and champion.run_id, candidate.run_id):
        raise ValueError(f"paired evidence of runs {paired.run_a} -> {paired.run_b} given for another candidate")
    comparable, why = comparability(candidate, champion)
    skip = "" if comparable else why
    c, v = candidate, champion if comparable else None
    latency_skip = skip
    if v is not None and (not c.hardware or c.hardware != v.hardware):
        latency_skip = (
            f"benchmarked on other hardware ({c.hardware or 'unknown'} vs {v.hardware or 'unknown'}): "
            "latency not compared"
        )
    latency = latency_metric(cfg)
    metric = {**METRICS, "latency_ms": latency}
    bounds = [
        _minimum(c, key, title, metric[name], what, getattr(cfg, limit), higher)
        for key, title, name, what, limit, higher in BOUNDS
    ]
    regressions = [
        _regression(
            c,
            v,
            latency_skip if name == "latency_ms" else skip,
            key,
            metric[name],
            what,
            getattr(cfg, limit),
            higher,
            ratio,
            paired=paired if v is not None else None,
            unpaired=unpaired,
        )
        for key, name, what, limit, higher, ratio in REGRESSIONS
    ]
    verdicts = [
        _verdict(c, key, title, TAGS[tag], getattr(cfg, weakest, weakest)) for key, title, tag, weakest in VERDICTS
    ] + [
        _verdict_regression(
            c, v, skip, _key(Verdict.FAIRNESS, "regression"), TAGS["fairness"], "Fairness verdict vs champion"
        ),
        _verdict(
            c,
            "overall/verdict",
            "Overall audit verdict",
            TAGS["overall"],
            cfg.min_overall_verdict,
            value=c.overall,
            source=" (from the stage verdicts, without this gate"
            + (f"; waived: {', '.join(w.check for w in c.waivers)})" if c.waivers else ")"),
        ),
    ]
    order = {group: i for i, group in enumerate(EVIDENCE)}
    judged = [_waived(x, c) for x in bounds + verdicts + regressions]
    criteria = tuple(sorted(judged, key=lambda x: (order[x.group], KINDS.index(x.kind))))
    verdict = "pass" if all(x.status in PASSING for x in criteria) else "fail"
    return GateRecord(
        verdict=verdict,
        model_name=model_name,
        candidate=_side(candidate),
        champion=_side(champion) if champion is not None else None,
        comparable=comparable,
        comparability=why,
        criteria=criteria,
        comparison=_comparison(candidate, champion, cfg),
        config=cfg.model_dump(mode="json"),
        decided_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        waivers=tuple(asdict(w) for w in candidate.waivers),
    )
