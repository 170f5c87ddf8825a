"""What the CLI prints on stdout: its rich tables and result lines, one function per command.

Tables go to a console as wide as the terminal, or a fixed width when stdout is not one (a
scheduled run's log, a pipe), so lines are not cut at 80 columns. Paths and links stay outside
the tables: a table cuts them with an ellipsis, and a user copies them.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from auditflow.audits.gate import METRICS
from auditflow.audits.release import RELEASE_VERDICT, STATUS_TAG

if TYPE_CHECKING:
    from auditflow.audits.comparison import ComparisonFiles
    from auditflow.audits.release import GateOutcome, ReleaseResult
    from auditflow.audits.report import ReportFiles
    from auditflow.audits.waivers import Waiver
    from auditflow.core.tracking import RunRecord
    from auditflow.core.tracking.registry import VersionRow
    from auditflow.flows.pipeline import PipelineResult
    from auditflow.models.training.benchseeds import SeedBench
    from auditflow.tasks.tune import StudySummary


def wide(width: int) -> Console:
    """A stdout console: the terminal's width, or `width` columns when stdout is not a terminal."""
    return Console(width=None if sys.stdout.isatty() else width)


def _table(title: str, columns: tuple[str, ...], right: tuple[str, ...] | None = None) -> Table:
    """A table with `columns`; those in `right` (default: all) right-justified."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if right is None or col in right else "left")
    return table


def run_summary(result: PipelineResult, seconds: float, workdir: Path) -> None:
    """`auditflow run`: the verdicts and headline numbers, then the paths and the MLflow link."""
    colour = {"pass": "green", "fail": "red"}.get(result.overall, "yellow")
    table = Table(title=f"auditflow run {result.run_id} ({seconds:.0f} s)", show_header=False)
    decision = result.decision
    if decision is not None:
        shade = {"pass": "green", "fail": "red"}.get(decision.status, "yellow")
        table.add_row("decision", f"[bold {shade}]{decision.outcome}[/] (release gate {result.release})")
    table.add_row("overall verdict", f"[bold {colour}]{result.overall}[/] (MLflow tag verdict/overall)")
    shipped = f"{result.test_accuracy_no_tta:.2%} (ONNX, no test-time augmentation)"
    table.add_row("test accuracy, shipped model", shipped)
    if result.test_accuracy != result.test_accuracy_no_tta:
        table.add_row("test accuracy with TTA", f"{result.test_accuracy:.2%} (not shipped; the audits do not use it)")
    if result.learning != "pass":
        table.add_row("[bold red]MODEL DID NOT LEARN[/]", f"[red]{result.learning_message}[/]")
    table.add_row("fairness", f"{result.fairness} (worst-class recall {result.worst_class_recall:.3f})")
    flagged = "no class" if not result.shortcut_classes else f"{result.shortcut_classes} class(es)"
    table.add_row("transparency", f"{result.transparency} (shortcut check: {flagged} flagged)")
    tpr = "not stated" if result.privacy_tpr != result.privacy_tpr else f"{result.privacy_tpr:.4f}"
    tier = "" if result.privacy_tier == "reference" else "; loss tier only, see the report"
    table.add_row("privacy", f"{result.privacy} ({result.privacy_attack} attack TPR at low FPR {tpr}{tier})")
    table.add_row("release gate", f"{result.release} ({result.model_version}; `auditflow models` lists the versions)")
    out = Console()
    out.print(table)
    if decision is not None:  # outside the table: the commands in them are copied whole
        for reason in decision.reasons:
            out.print(f"why: {reason}", soft_wrap=True, markup=False, highlight=False)
        for step in decision.next_steps:
            out.print(f"next: {step}", soft_wrap=True, markup=False, highlight=False)
    # paths and the link outside the table, never wrapped: a table cuts them with an ellipsis when
    # stdout is not a terminal (a scheduled run's log), and a user copies them
    paths = {"ONNX model": result.onnx_path, "report": result.report_html, "report PDF": result.report_pdf}
    for name, path in paths.items():
        if path:
            out.print(f"{name}: {path}", soft_wrap=True, markup=False, highlight=False)
    out.print(f"MLflow run: [link={result.run_url}]{result.run_url}[/link]", soft_wrap=True, highlight=False)
    if result.tracking_uri.startswith("sqlite:"):
        out.print(f"Local store: serve it with [bold]auditflow ui --workdir {workdir}[/] and open the link")


def report(record: RunRecord, files: ReportFiles, run_url: str) -> None:
    """`auditflow report`: the overall verdict and where the documents are."""
    from auditflow.audits.report import overall_verdict

    Console(soft_wrap=True, highlight=False).print(  # paths whole, never wrapped: a user copies them
        f"overall verdict: {overall_verdict(record)}\nreport: {files.html}\nmarkdown: {files.markdown}\n"
        + (f"pdf: {files.pdf}\n" if files.pdf else f"{files.pdf_note}\n")
        + f"model card: {files.html.parent / 'model_card.html'}\ndatasheet: {files.html.parent / 'datasheet.html'}\n"
        + f"MLflow run: {run_url}",
        markup=False,
    )


def study(result: StudySummary, data: str, workdir: Path) -> None:
    """`auditflow tune`: the Pareto front, the chosen trial and how to run the tuned profile."""
    out = wide(150)
    front = _table(
        f"Pareto front (validation accuracy vs worst-class recall) of study {result.study}",
        ("trial", "accuracy", "worst recall", "parameters"),
        right=("trial", "accuracy", "worst recall"),
    )
    for row in result.front:
        values = (f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in result.params)
        front.add_row(
            f"{row['trial']}{' *' if row['trial'] == result.chosen_trial else ''}",
            f"{row['val_accuracy']:.2%}",
            f"{row['worst_class_recall']:.3f}",
            " ".join(values),
        )
    out.print(front)
    table = Table(title=f"study {result.study} (MLflow run {result.run_id})", show_header=False)
    table.add_row("trials", ", ".join(f"{n} {state}" for state, n in sorted(result.states.items())))
    chosen = f"{result.chosen_trial}: {result.reason}"
    table.add_row("chosen trial", chosen if result.rule_met else f"[red]{chosen}[/]")
    table.add_row("validation accuracy", f"{result.val_accuracy:.2%}")
    table.add_row("worst-class recall", f"{result.worst_class_recall:.3f}")
    if result.versus_start:
        table.add_row("vs the start", result.versus_start)
    table.add_row("tuned profile", result.profile_path)
    table.add_row("MLflow", result.tracking_uri)
    out.print(table)
    out.print(f"Run it: [bold]auditflow run --profile {result.profile_path} --data {data} --workdir {workdir}[/]")


def bench(summary: dict[str, Any], run_id: str, workdir: Path) -> None:
    """`auditflow bench`: latency and throughput per backend and batch, and the recommendations."""
    columns = ("backend", "batch", "p50 ms", "p99 ms", "images/s", "vs eager", "of peak", "accuracy")
    table = _table(f"bench {run_id}: {summary.get('device', '')}", columns)
    for r in summary.get("rows", []):
        table.add_row(
            r["backend"],
            str(r["batch_size"]),
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['images_per_second']:.0f}",
            f"{r['speedup_vs_eager']:.2f}x",
            f"{r['fraction_of_peak']:.1%}",
            r["verdict"],
        )
    out = wide(150)
    out.print(table)
    for device, rec in summary.get("recommendation", {}).items():
        for target, choice in rec.items():
            out.print(f"{device}, {target} target: [bold]{choice['backend']}[/] ({choice['reason']})")
    out.print(f"Rebuild the report with: auditflow report {run_id} --workdir {workdir}")


BENCH_TRAIN_COLUMNS = (
    "profile",
    "seed",
    "test acc",
    "no TTA",
    "epochs",
    "train s",
    "val s",
    "img/s",
    "MFLOP/img",
    "GFLOP/s",
    "of peak",
    "to target s",
    "kept",
)


def bench_train(result: SeedBench, data: str, out: Console) -> None:
    """`auditflow bench-train`: one row per seed (and the baseline), the plans, the summary."""
    table = _table(f"bench-train: {result.profile} on {data}", BENCH_TRAIN_COLUMNS)
    for r in result.all_rows:
        table.add_row(
            r.profile,
            str(r.seed),
            f"{r.test_accuracy:.2%}",
            f"{r.shipped_accuracy:.2%}",
            str(r.epochs),
            f"{r.train_seconds:.1f}",
            f"{r.val_seconds:.1f}",
            f"{r.images_per_second:.0f}",
            f"{r.flops_per_image / 1e6:.1f}",
            f"{r.achieved_flops_per_second / 1e9:.1f}",
            f"{r.fraction_of_peak:.1%}",
            "-" if r.time_to_target_seconds is None else f"{r.time_to_target_seconds:.1f}",
            r.kept_weights,
        )
    out.print(table)
    for r in result.all_rows:
        out.print(
            f"{r.profile} seed {r.seed}: {r.plan}; per-epoch validation {r.val_seconds:.1f} s "
            f"in all ({r.val_seconds / max(r.epochs, 1):.1f} s per epoch)"
        )
    summary = result.summary
    out.print(
        f"{result.profile}: mean test accuracy {summary['accuracy_mean']:.2%} "
        f"(sd {summary['accuracy_std']:.2%}, n={len(result.rows)}); mean training "
        f"{summary['train_seconds_mean']:.1f} s; peak: {result.rows[0].peak_source}"
    )
    if gain := result.vs_against:
        seeds = ", ".join(f"{d:+.2f}" for d in gain.points_by_seed)
        shipped = ", ".join(f"{d:+.2f}" for d in gain.shipped_points_by_seed)
        out.print(
            f"vs {result.against[0].profile} ({gain.terms}): accuracy ratio "
            f"{gain.accuracy_ratio:.4f} ({result.profile} / the other), {gain.points:+.2f} points "
            f"({result.profile} minus the other; by seed: {seeds}); without TTA "
            f"(the shipped file) {gain.shipped_ratio:.4f} (by seed: {shipped}); epochs "
            f"{gain.epochs[0]:.1f} vs {gain.epochs[1]:.1f}; {gain.train_time_ratio:.2f}x the training time"
        )
    ratio = result.vs_baseline
    if result.base and ratio:
        errors = "" if ratio["error_ratio"] is None else f"{ratio['error_ratio']:.2f}x the error rate, "
        out.print(
            f"vs {result.base.profile}: {ratio['accuracy_points']:+.1f} accuracy points, {errors}"
            f"{ratio['train_time_ratio']:.1f}x the training time"
        )


def overhead(over: dict[str, float], out: Console) -> None:
    """`auditflow bench-train --overhead`: the train task in a flow against the direct call."""
    direct, outside = over["direct_wall_seconds"], over["outside_loop_extra_seconds"]
    out.print(
        f"train task in a flow: {over['task_wall_seconds']:.1f} s vs direct fit {direct:.1f} s "
        f"(seed 0): overhead {over['overhead_fraction']:+.1%}; training loops "
        f"{over['train_seconds']:.1f} s vs {over['direct_train_seconds']:.1f} s; outside the loop "
        f"{outside:+.1f} s ({over['outside_loop_extra_fraction']:+.1%})"
    )


def models(found: dict[str, list[VersionRow]], uri: str, model_name: str | None) -> None:
    """`auditflow models`: one table per registered model, newest version first."""
    out = wide(170)
    if not any(found.values()):
        out.print(f"no registered model versions in {uri}" + (f" named {model_name!r}" if model_name else ""))
        return
    columns = ("version", "aliases", "status", "gate", "overall", "accuracy", "worst recall", "run", "registered")
    for name, rows in found.items():
        table = _table(f"registered model {name}", columns, right=("version", "accuracy", "worst recall"))
        for row in rows:
            v = row.version
            accuracy = row.metrics.get(METRICS["accuracy"])
            recall = row.metrics.get(METRICS["worst_class_recall"])
            table.add_row(
                v.version,
                ", ".join(v.aliases) or "-",
                v.tags.get(STATUS_TAG, "-"),
                v.tags.get(RELEASE_VERDICT, "-"),
                row.verdicts.get("overall", "-"),
                "-" if accuracy is None else f"{accuracy:.2%}",
                "-" if recall is None else f"{recall:.3f}",
                f"{v.run_id} ({row.run_name})" if row.run_name else (v.run_id or "-"),
                datetime.fromtimestamp(v.created_ms / 1000).strftime("%Y-%m-%d %H:%M"),
            )
        out.print(table)


def gate(outcome: GateOutcome, console: Console) -> None:
    """`auditflow gate`: the record on stdout, the one-line verdict on `console` (stderr)."""
    from rich.markup import escape

    Console(soft_wrap=True).print(outcome.markdown, markup=False, highlight=False)
    colour = "green" if outcome.verdict == "pass" else "red"
    console.print(f"[bold {colour}]release gate[/] {escape(outcome.summary)}", highlight=False)


def waived(waivers: tuple[Waiver, ...], report: str) -> None:
    """`auditflow promote --waive`: what was recorded, and the rebuilt report (or why not)."""
    out = Console(soft_wrap=True, highlight=False)
    for w in waivers:
        out.print(f"waived {w.check} ({w.verdict}) as {w.by}: {w.reason} (MLflow: release/waivers.json)", markup=False)
    out.print(report, markup=False)


def promotion(result: ReleaseResult) -> None:
    """`auditflow promote`: which version is champion now, and which it replaced."""
    out = Console(soft_wrap=True, highlight=False)
    model = f"{result.model_name} v{result.version}" + (f" (the {result.variant} variant)" if result.variant else "")
    if result.previous_champion == result.version:
        out.print(f"{model} is already champion ({result.summary})", markup=False)
    else:
        replaced = f", replacing v{result.previous_champion}" if result.previous_champion else ""
        out.print(f"{model} is now champion{replaced} ({result.summary})", markup=False)


def _paired_cells(d: Any) -> tuple[str, str, str, str, str]:
    """A, B, B - A, interval, p of a `PairedDifference` (or of nothing), 3 decimals: 80 columns."""
    if d is None:
        return "-", "-", "-", "-", "-"
    return f"{d.a:.3f}", f"{d.b:.3f}", f"{d.difference:+.3f}", f"{d.low:+.3f}..{d.high:+.3f}", f"{d.p_value:.2g}"


def comparison(found: ComparisonFiles) -> None:
    """`auditflow compare`: B - A of every measure with its interval and p-value, the verdicts,
    the notes, then where the documents were logged (outside the table: paths are copied)."""
    c = found.comparison
    out = wide(80)
    columns = ("measure", "A", "B", "B - A", "interval", "p")
    table = _table(f"B {c.run_b} vs A {c.run_a}: {c.n_test} test images", columns, right=(*columns[1:4], "p"))
    table.add_row("accuracy", *_paired_cells(c.accuracy))
    for row in c.classes:
        table.add_row(f"recall {row.name}", *_paired_cells(row.recall))
    for r in c.attacks:
        auc: tuple[str, ...] = ("-",) * 5
        if r.auc_a is not None and r.auc_b is not None and r.low is not None and r.high is not None:
            auc = (f"{r.auc_a:.3f}", f"{r.auc_b:.3f}", f"{r.auc_b - r.auc_a:+.3f}", f"{r.low:+.3f}..{r.high:+.3f}")
            auc += (f"{r.p_value:.2g}",)
        table.add_row(f"AUC {r.attack}" + ("" if r.paired else " (unpaired)"), *auc)
        table.add_row(f"TPR@{r.verdict_fpr:g}FPR {r.attack}", *_paired_cells(r.tpr))
    out.print(table)
    verdicts = _table("verdicts", ("verdict", "A", "B", "change"), right=())
    for v in c.verdicts:
        verdicts.add_row(v.group, v.a or "-", v.b or "-", v.change)
    out.print(verdicts)
    notes = [
        f"intervals: two-sided {c.confidence:g}; per class simultaneous (each at {c.class_level:.4g}, Bonferroni)",
        f"accuracy: {c.accuracy.fixed} images fixed by B, {c.accuracy.broken} broken (McNemar exact test)",
    ]
    notes += [f"not compared: {c.attacks_note}"] if c.attacks_note else []
    notes += [f"{r.attack}: {r.note}" for r in c.attacks if r.note]
    notes += [f"logged on run {c.run_b}: {path}" for path in found.artifacts]
    for line in notes:
        out.print(line, soft_wrap=True, markup=False, highlight=False)
