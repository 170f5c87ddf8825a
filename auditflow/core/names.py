"""Every MLflow metric, tag and artifact name, and every verdict group, written once.

The stages that write a name and the gate, report, model card and datasheet that read it all
import it from here, so a renamed metric cannot leave a reader behind (`tests/test_names.py`
fails on a `stage/...` string literal anywhere else). The scheme (docs/architecture.md):
`stage/name` with the unit in the name where it is not obvious, `stage/metric/class/<class>`
per class (`per_class`), `verdict/<group>` for verdicts (`verdict_tag`).

Names with a `{field}` are templates: `Privacy.ATTACK.format(attack="rmia", name="auc")`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. ]")
MAX_PART = 80  # characters of one key part: MLflow refuses metric keys over 250 characters
VERDICT_PREFIX = "verdict/"
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI
SUMMARY = "summary.json"  # <stage>/summary.json: the stage's small result, read back by the report
CHECKS = "checks.json"  # <stage>/checks.json: the stage's checks table


class Stage:
    """Stage names: the child run's name, its `auditflow.stage` tag and its names' prefix."""

    INGEST = "ingest"
    TRAIN = "train"
    EVALUATE = "evaluate"
    FAIRNESS = "fairness"
    TRANSPARENCY = "transparency"
    PRIVACY = "privacy"
    EXPORT = "export"
    BENCHMARK = "benchmark"
    RELEASE = "release"
    TUNE = "tune"


class Verdict:
    """Verdict groups. Each is a tag `verdict/<group>` (`verdict_tag`) on the stage run and the
    parent, valued `pass`, `fail` or `inconclusive` (`warn` for advisory checks)."""

    LEARNING = "learning"
    CALIBRATION = "calibration"
    FAIRNESS = "fairness"
    FAIRNESS_SUBGROUPS = "fairness_subgroups"
    FAIRNESS_ADJUSTED = "fairness_adjusted"  # the logit-adjusted variant's; advisory, like its file's
    TRANSPARENCY = "transparency"  # the shortcut check
    TRANSPARENCY_METHOD = "transparency_method"  # whether the maps can be trusted; advisory (about the method)
    PRIVACY = "privacy"
    PRIVACY_STRENGTH = "privacy_strength"
    PRIVACY_DESIGN = "privacy_design"
    PRIVACY_PER_CLASS = "privacy_per_class"
    ONNX_PARITY = "onnx_parity"
    OVERALL = "overall"  # the worst gating verdict, set by the report stage
    RELEASE = "release"  # the release gate's pass | fail; not an input of `overall`
    SHIPPED_VARIANT = "fp32"  # the ONNX file that ships; its group gates, the other variants' do not
    ADJUSTED_VARIANT = "adjusted"  # FP32 with the fairness audit's logit offsets folded in

    @staticmethod
    def onnx(variant: str) -> str:
        """The group of an ONNX variant's checks (`onnx_fp32`, `onnx_int8`)."""
        return f"onnx_{variant}"

    @staticmethod
    def gates(group: str) -> bool:
        """Whether verdict group `group` counts towards `verdict/overall`. These do not: the
        overall verdict itself; the release gate (a comparison with the champion, not an audit of
        this model); each optional ONNX variant other than the shipped FP32 file (`onnx_int8`,
        `onnx_fp16`, `onnx_adjusted`): its verdict only decides whether that variant is
        recommended; the fairness of the logit-adjusted variant (`fairness_adjusted`); and the
        checks of the attribution method (`transparency_method`: they judge the explanation, not
        the model; a method that fails its sanity check makes the shortcut check inconclusive)."""
        if group in (Verdict.OVERALL, Verdict.RELEASE, Verdict.FAIRNESS_ADJUSTED, Verdict.TRANSPARENCY_METHOD):
            return False
        prefix = Verdict.onnx("")
        return not group.startswith(prefix) or group in (Verdict.ONNX_PARITY, Verdict.onnx(Verdict.SHIPPED_VARIANT))


def verdict_tag(group: str) -> str:
    """`verdict/<group>`: the tag that holds a verdict group's status."""
    return f"{VERDICT_PREFIX}{group}"


def gating_verdicts(tags: dict[str, str]) -> dict[str, str]:
    """Verdict group -> status of the `verdict/<group>` tags that gate the run (`Verdict.gates`):
    not the release gate (a sound model worse than the champion is not a failed audit) and not
    an optional ONNX variant (its verdict decides only whether it is recommended)."""
    return {
        k.removeprefix(VERDICT_PREFIX): v
        for k, v in tags.items()
        if k.startswith(VERDICT_PREFIX) and Verdict.gates(k.removeprefix(VERDICT_PREFIX))
    }


def metric_key(*parts: str) -> str:
    """`stage/metric/class/<name>` with every part made a legal MLflow key (letters, digits,
    `_-. `); other characters become `_`, so class folders like `cat's` still log. A part
    longer than `MAX_PART` is cut and ends with 6 hex digits of its hash, so a 255-character
    folder name still fits MLflow's 250 characters and stays distinct."""
    return "/".join(_safe_part(str(p)) for p in parts)


def per_class(name: str, cls: str, *suffix: str) -> str:
    """The per-class form of metric `name` (`evaluate/recall` -> `evaluate/recall/class/cat`),
    with optional trailing parts (`privacy/loss` + `auc` -> `privacy/loss/class/cat/auc`)."""
    return metric_key(*name.split("/"), "class", cls, *suffix)


def _safe_part(part: str) -> str:
    safe = _UNSAFE.sub("_", part)
    if len(safe) <= MAX_PART:
        return safe
    return f"{safe[: MAX_PART - 7]}-{hashlib.sha256(part.encode()).hexdigest()[:6]}"


class Ingest:
    """Names under `ingest/...`."""

    CLASS_COUNTS_JSON = "ingest/class_counts.json"
    DUPLICATE_MAX_DISTANCE = "ingest/duplicate_max_distance"
    EXACT_DUPLICATES = "ingest/exact_duplicates"
    EXAMPLES_PNG = "ingest/examples.png"
    IMAGE_CHANNELS = "ingest/image_channels"
    IMAGE_HEIGHT_PX = "ingest/image_height_px"
    IMAGE_WIDTH_PX = "ingest/image_width_px"
    NEAR_DUPLICATES = "ingest/near_duplicates"
    NEAR_DUPLICATE_SHARE = "ingest/near_duplicate_share"
    N_CLASSES = "ingest/n_classes"
    IMAGES = "ingest/images_{split}"  # .format(split=...): train, validation, test; per class: `per_class`


class Train:
    """Names under `train/...`."""

    CHECKPOINT_FOLDER = "checkpoint"  # the final checkpoint's artifact folder: checkpoint/model.pt
    DP_ACCOUNTANT = "train/dp_accountant"
    DP_DELTA = "train/dp_delta"
    DP_EPSILON = "train/dp_epsilon"
    DP_MAX_GRAD_NORM = "train/dp_max_grad_norm"
    DP_NOISE_MULTIPLIER = "train/dp_noise_multiplier"
    DP_STEPS = "train/dp_steps"
    FINAL_VAL_ACCURACY = "train/final_val_accuracy"
    KEPT_WEIGHTS = "train/kept_weights"
    PARAMETERS = "train/parameters"
    PLAN = "train/plan"
    PLANNED_EPOCHS = "train/planned_epochs"
    PRECISION = "train/precision"  # why: the timings of `auto`, or the configured precision
    REUSED_FROM_RUN = "train/reused_from_run"
    TRAIN_S = "train/train_s"
    EPOCH = "train/{name}"  # .format(name=...): a per-epoch or end-of-training figure
    DP = "train/dp_{name}"  # .format(name=...): the privacy accountant's figures


class Evaluate:
    """Names under `evaluate/...`."""

    CHANCE_ACCURACY = "evaluate/chance_accuracy"
    CONFUSION_MATRIX_CSV = "evaluate/confusion_matrix.csv"
    CONFUSION_MATRIX_PNG = "evaluate/confusion_matrix.png"
    MISTAKES_PNG = "evaluate/mistakes.png"  # per class, the shipped model's most confident mistakes
    F1 = "evaluate/f1"  # per class: per_class(Evaluate.F1, cls)
    MEMBER_ACCURACY = "evaluate/member_accuracy"
    PER_CLASS_JSON = "evaluate/per_class.json"
    PREDICTIONS_NPZ = "evaluate/predictions.npz"  # the `Predictions` container (auditflow.core.predictions)
    PRECISION = "evaluate/precision"  # per class: per_class(Evaluate.PRECISION, cls)
    RECALL = "evaluate/recall"  # per class: per_class(Evaluate.RECALL, cls)
    RELIABILITY_PNG = "evaluate/reliability.png"
    TEMPERATURE = "evaluate/temperature"
    TEMPERATURE_FIT_IMAGES = "evaluate/temperature_fit_images"
    TEMPERATURE_JSON = "evaluate/temperature.json"
    TEST_ACCURACY = "evaluate/test_accuracy"
    TEST_ACCURACY_CI99_LOW = "evaluate/test_accuracy_ci99_low"
    TEST_ACCURACY_CI_HIGH = "evaluate/test_accuracy_ci_high"
    TEST_ACCURACY_CI_LOW = "evaluate/test_accuracy_ci_low"
    TEST_ACCURACY_NO_TTA = "evaluate/test_accuracy_no_tta"
    TEST_ACCURACY_NO_TTA_CI_HIGH = "evaluate/test_accuracy_no_tta_ci_high"
    TEST_ACCURACY_NO_TTA_CI_LOW = "evaluate/test_accuracy_no_tta_ci_low"
    TEST_ECE = "evaluate/test_ece"
    TEST_ECE_CALIBRATED = "evaluate/test_ece_calibrated"
    TEST_ECE_NO_TTA = "evaluate/test_ece_no_tta"
    TEST_IMAGES = "evaluate/test_images"
    TEST_MACRO_F1 = "evaluate/test_macro_f1"
    TEST_MACRO_F1_NO_TTA = "evaluate/test_macro_f1_no_tta"
    TEST_NLL = "evaluate/test_nll"
    TEST_NLL_CALIBRATED = "evaluate/test_nll_calibrated"
    TEST_NLL_NO_TTA = "evaluate/test_nll_no_tta"


class Fairness:
    """Names under `fairness/...`."""

    MITIGATION_ACCURACY_AFTER = "fairness/mitigation/accuracy_after"
    MITIGATION_ACCURACY_BEFORE = "fairness/mitigation/accuracy_before"
    MITIGATION_RECALL_GAP_AFTER = "fairness/mitigation/recall_gap_after"
    MITIGATION_RECALL_GAP_BEFORE = "fairness/mitigation/recall_gap_before"
    MITIGATION_WORST_CLASS_RECALL_AFTER = "fairness/mitigation/worst_class_recall_after"
    MITIGATION_WORST_CLASS_RECALL_BEFORE = "fairness/mitigation/worst_class_recall_before"
    FALSE_POSITIVE_RATE = "fairness/false_positive_rate"  # per class: per_class(FALSE_POSITIVE_RATE, cls)
    PER_CLASS_JSON = "fairness/per_class.json"
    PRECISION = "fairness/precision"  # per class: per_class(PRECISION, cls)
    RECALL = "fairness/recall"  # per class: per_class(RECALL, cls)
    RECALL_BY_CLASS_PNG = "fairness/recall_by_class.png"
    RECALL_GAP = "fairness/recall_gap"
    RECALL_GAP_CI_HIGH = "fairness/recall_gap_ci_high"
    RECALL_GAP_CI_LOW = "fairness/recall_gap_ci_low"
    REGRESSION = "fairness/regression"
    SUBGROUP_CELLS_JSON = "fairness/subgroup_cells.json"
    SUBGROUP_GAPS_JSON = "fairness/subgroup_gaps.json"
    SUBGROUP_MAX_TPR_GAP = "fairness/subgroup/max_tpr_gap"
    SUBGROUP_MAX_TPR_GAP_CI_HIGH = "fairness/subgroup/max_tpr_gap_ci_high"
    SUBGROUP_MAX_TPR_GAP_CI_LOW = "fairness/subgroup/max_tpr_gap_ci_low"
    SUBGROUP_TPR_GAP = "fairness/subgroup_tpr_gap"
    VERDICT = "fairness/verdict"
    WORST_CLASS_RECALL = "fairness/worst_class_recall"
    WORST_CLASS_RECALL_CI_HIGH = "fairness/worst_class_recall_ci_high"
    WORST_CLASS_RECALL_CI_LOW = "fairness/worst_class_recall_ci_low"


class Transparency:
    """Names under `transparency/...`."""

    AUDIT_COST_VS_TRAINING = "transparency/audit_cost_vs_training"
    AUDIT_S = "transparency/audit_s"
    CONCENTRATION = "transparency/concentration"  # per class: per_class(CONCENTRATION, cls)
    DELETION_AUC_ATTRIBUTED = "transparency/deletion/auc_attributed"
    DELETION_AUC_RANDOM = "transparency/deletion/auc_random"
    DELETION_GAP = "transparency/deletion/gap"  # random minus attributed area, paired; + _ci_low, _ci_high
    DELETION_GAP_CI_HIGH = "transparency/deletion/gap_ci_high"
    DELETION_GAP_CI_LOW = "transparency/deletion/gap_ci_low"
    DELETION_PNG = "transparency/deletion.png"
    EXAMPLES_PNG = "transparency/examples.png"
    IMAGES_EXPLAINED = "transparency/images_explained"
    MEAN_MAPS_PNG = "transparency/mean_maps.png"
    NECESSITY_DROP = "transparency/necessity_drop"  # per class: per_class(NECESSITY_DROP, cls)
    SANITY_SPEARMAN = "transparency/sanity/spearman"
    SANITY_SPEARMAN_CI_HIGH = "transparency/sanity/spearman_ci_high"
    SANITY_SPEARMAN_CI_LOW = "transparency/sanity/spearman_ci_low"
    SHORTCUT = "transparency/shortcut"  # the shortcut check's key
    SANITY_CHECK = "transparency_method/sanity"  # the method's checks' keys (verdict group transparency_method)
    DELETION_CHECK = "transparency_method/deletion"
    SHORTCUT_CLASSES = "transparency/shortcut_classes"  # classes flagged
    SHORTCUT_INCONCLUSIVE = "transparency/shortcut_inconclusive"  # classes the test could not settle
    SHORTCUT_JSON = "transparency/shortcut.json"
    SUFFICIENCY_RISE = "transparency/sufficiency_rise"  # per class: per_class(SUFFICIENCY_RISE, cls)


class Privacy:
    """Names under `privacy/...`."""

    ATTACKED_MODEL = "privacy/attacked_model"
    ATTACK_SCORES_JSON = "privacy/attack_scores.json"  # every attack's score of each audited point
    ATTACK_STRENGTH = "privacy/attack_strength"
    AUDIT_BALANCE = "privacy/audit_balance"
    AUDIT_COST_VS_TRAINING = "privacy/audit_cost_vs_training"
    AUDIT_S = "privacy/audit_s"
    CANARIES_CORRECT = "privacy/canaries/correct"
    CANARIES_COUNT = "privacy/canaries/count"
    CANARIES_EPSILON_LOWER_BOUND = "privacy/canaries/epsilon_lower_bound"
    CANARIES_GUESSES = "privacy/canaries/guesses"
    EXPOSURE_BY_CLASS_PNG = "privacy/exposure_by_class.png"
    JOINT_ANSWER = "privacy/joint_answer"
    JOINT_SPEARMAN = "privacy/joint/spearman"
    JOINT_SPEARMAN_CI_HIGH = "privacy/joint/spearman_ci_high"
    JOINT_SPEARMAN_CI_LOW = "privacy/joint/spearman_ci_low"
    LOSS_AUC = "privacy/loss/auc"
    LOSS_HISTOGRAM_PNG = "privacy/loss_histogram.png"
    MEAN_LOSS_MEMBERS = "privacy/mean_loss_members"
    MEAN_LOSS_NONMEMBERS = "privacy/mean_loss_nonmembers"
    N_MEMBERS = "privacy/n_members"
    N_NONMEMBERS = "privacy/n_nonmembers"
    PER_CLASS_JOINT_JSON = "privacy/per_class_joint.json"
    PER_CLASS_TPR = "privacy/per_class_tpr"
    REFERENCES_CACHED = "privacy/references/cached"
    REFERENCES_COUNT = "privacy/references/count"
    REFERENCES_TRAIN_S = "privacy/references/train_s"
    REFERENCES_WALL_S = "privacy/references/wall_s"
    REGRESSION = "privacy/regression"
    ROC_LOGLOG_PNG = "privacy/roc_loglog.png"
    STRONGEST_ATTACK = "privacy/strongest_attack"
    STRONGEST_AUC = "privacy/strongest/auc"
    STRONGEST_AUC_CI_HIGH = "privacy/strongest/auc_ci_high"
    STRONGEST_AUC_CI_LOW = "privacy/strongest/auc_ci_low"
    STRONGEST_TPR = "privacy/strongest_tpr"
    STRONGEST_TPR_AT_VERDICT_FPR = "privacy/strongest/tpr_at_verdict_fpr"
    STRONGEST_TPR_AT_VERDICT_FPR_CI_HIGH = "privacy/strongest/tpr_at_verdict_fpr_ci_high"
    STRONGEST_TPR_AT_VERDICT_FPR_CI_LOW = "privacy/strongest/tpr_at_verdict_fpr_ci_low"
    TIER = "privacy/tier"
    TPR_BOUND = "privacy/tpr_bound"
    VERDICT = "privacy/verdict"
    ATTACK = "privacy/{attack}/{name}"  # .format(attack=..., name=...): auc, advantage, tpr_at_1pct_fpr...
    ATTACK_PER_CLASS_JSON = "privacy/{attack}/per_class.json"
    ATTACK_BASE = "privacy/{attack}"  # per class: per_class(ATTACK_BASE.format(attack=...), cls, "auc")


class Export:
    """Names under `export/...`."""

    INT8_ACCURACY_DROP_POINTS = "export/int8/accuracy_drop_points"  # + `_ci_low`, `_ci_high`: paired exact interval
    PARITY_MAX_ABS_DIFF = "export/parity/max_abs_diff"
    PARITY_PROBABILITIES_MAX_ABS_DIFF = "export/parity/probabilities_max_abs_diff"
    PARITY_TOP1_AGREEMENT = "export/parity/top1_agreement"
    SHIPPED_PROBABILITIES_ECE = "export/fp32/probabilities_ece"  # the calibration check's value
    TEMPERATURE = "export/temperature"  # T folded into the ONNX graph's `probabilities` output
    VARIANTS_JSON = "export/variants.json"
    VARIANT = "export/{variant}/{name}"  # .format(variant=..., name=...)
    ADJUSTED_FILE = "model.adjusted.onnx"  # the logit-adjusted variant's file, in the stage's `onnx/` folder


class Benchmark:
    """Names under `benchmark/...`."""

    CPU = "benchmark/cpu"
    CPU_FLAGS = "benchmark/cpu_flags"
    FLOPS_PER_IMAGE = "benchmark/flops_per_image"
    LATENCY_JSON = "benchmark/latency.json"
    THREADS = "benchmark/threads"
    THROUGHPUT_PNG = "benchmark/throughput.png"
    RESULT = "benchmark/{backend}/bs{batch_size}/{name}"  # .format(backend=..., batch_size=..., name=...)
    PEAK_SOURCE = "benchmark/peak_source/{device}"
    RECOMMENDED = "benchmark/recommended/{device}/{target}"

    @staticmethod
    def by_batch_size(keys: Iterable[str], backend: str, name: str) -> dict[int, str]:
        """Batch size -> key, of the `RESULT` keys among `keys` for one backend and one name
        (`benchmark/onnx-int8/bs256/speedup_vs_eager` -> {256: that key})."""
        found = {}
        for key in keys:
            parts = key.split("/")
            if len(parts) == 4 and parts[0] == Stage.BENCHMARK and parts[1] == backend and parts[3] == name:
                size = parts[2].removeprefix("bs")
                if parts[2].startswith("bs") and size.isdigit():
                    found[int(size)] = key
        return found


class Release:
    """Names under `release/...`."""

    ACCURACY_VS_CHAMPION = "release/accuracy_vs_champion"  # candidate minus champion
    CHAMPION = "release/champion"
    COMPARABILITY = "release/comparability"
    GATE_JSON = "release/gate.json"
    GATE_MD = "release/gate.md"
    LATENCY_RATIO_VS_CHAMPION = "release/latency_ratio_vs_champion"
    MODEL = "release/model"
    OUTCOME = "release/outcome"  # on the pipeline run: what became of its version, in words
    PRIVACY_TPR_VS_CHAMPION = "release/privacy_tpr_vs_champion"
    STATUS = "release/status"  # on a model version: candidate | rejected | champion | retired | rolled_back
    SUMMARY = "release/summary"
    WORST_CLASS_RECALL_VS_CHAMPION = "release/worst_class_recall_vs_champion"
    WAIVER = "release/waiver/{check}"  # .format(check=verdict group): one accepted inconclusive check, JSON
    WAIVERS_JSON = "release/waivers.json"
    CRITERIA = "release/criteria_{status}"  # .format(status=...): how many criteria had that status


class Compare:
    """What `auditflow compare RUN_A RUN_B` logs on RUN_B (the pipeline run): the paired comparison
    with RUN_A as Markdown, HTML and JSON."""

    MARKDOWN = "compare/vs_{run}.md"  # .format(run=RUN_A's id)
    HTML = "compare/vs_{run}.html"
    JSON = "compare/vs_{run}.json"


class Report:
    """What the report stage logs on the pipeline (parent) run: files under `report/`."""

    FOLDER = "report"  # report.html, .md, .pdf; the model card and the datasheet (.html, .md, .json)
    FIGURES_FOLDER = "report/figures"  # the report's figures as PNGs
    PDF_NOTE = "report/pdf"  # tag: why no PDF was made, when none was


class Tune:
    """Names under `tune/...`."""

    CHOSEN_RUN_ID = "tune/chosen_run_id"
    CHOSEN_TRIAL = "tune/chosen_trial"
    EPOCHS = "tune/epochs"
    FINGERPRINT = "tune/fingerprint"
    OBJECTIVE = "tune/objective"
    OPTIMIZATION_HISTORY_PNG = "tune/optimization_history.png"
    PARAM_IMPORTANCES = "tune/param_importances"
    PARAM_IMPORTANCES_PNG = "tune/param_importances.png"
    PARETO_FRONT_JSON = "tune/pareto_front.json"
    PARETO_FRONT_PNG = "tune/pareto_front.png"
    PROFILE_PATH = "tune/profile_path"
    PROFILE_YAML = "tune/profile.yaml"
    PRUNED = "tune/pruned"
    RETRY_OF = "tune/retry_of"
    RULE_MET = "tune/rule_met"
    SPACE_JSON = "tune/space.json"
    STATE = "tune/state"
    STORAGE = "tune/storage"
    STUDY = "tune/study"
    TRAIN_S = "tune/train_s"
    TRIALS_JSON = "tune/trials.json"
    TRIALS_TARGET = "tune/trials_target"
    TRIAL_NUMBER = "tune/trial_number"
    WORKER = "tune/worker"  # the Dask worker that ran the trial, or "this process"
    VAL_ACCURACY = "tune/val_accuracy"
    WORST_CLASS_RECALL = "tune/worst_class_recall"
    RECALL_OF_CLASS = "tune/recall.{cls}"  # .format(cls=...)
    TRIALS_IN_STATE = "tune/trials_{state}"  # .format(state=...)
    SUMMARY_JSON = "tune/summary.json"
