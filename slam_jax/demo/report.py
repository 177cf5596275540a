"""`mode: report`: what a pipeline run did and what its model learned, as Markdown with PNG plots.

Reads only files the earlier stages wrote: the pair-metric results (`<eval dir>/<metric>.json`) after
pre-training and after DPO, both runs' `metrics.jsonl`, every stage's `stage_done.json` (its wall time) and a
generate run's `generations.jsonl` naming its wav files. Writes `report.out_path` (Markdown: the metrics table,
training and timing summaries, the plots, links to the audio, the commands to reproduce), `report.json` beside
it (the same numbers, for tools) and the plots in the stage's folder, then prints the metrics table.
"""

import dataclasses
import json
import math
import platform

import jax
import matplotlib

from slam_jax.paths import Path

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from slam_jax.evaluation.generation import GENERATIONS  # noqa: E402
from slam_jax.files import read_jsonl, write_text  # noqa: E402
from slam_jax.pipeline import DONE  # noqa: E402
from slam_jax.settings import Settings, setting  # noqa: E402

CHANCE = 0.5  # every pair metric is a two-way choice
COLUMNS = (("before", "after pre-training"), ("after", "after DPO"))


@dataclasses.dataclass(frozen=True)
class ReportSettings(Settings):
    """`report`: the earlier stages' folders to read ('' = not run) and the Markdown file to write."""

    out_path: str  # the report's Markdown file; report.json goes beside it
    title: str = "slam_jax report"
    before: str = setting("", exists=True)  # eval folder after pre-training
    after: str = setting("", exists=True)  # eval folder after DPO
    pretrain: str = setting("", exists=True)  # pre-training workdir (its metrics.jsonl)
    dpo: str = setting("", exists=True)  # DPO workdir
    pipeline_dir: str = setting("", exists=True)  # the pipeline's WORKDIR (stage wall times)
    listen: str = setting("", exists=True)  # a generate run's output folder whose generations.jsonl names wavs
    commands: str = ""  # shell lines to reproduce the run


@dataclasses.dataclass(frozen=True)
class ReportJob(Settings):
    """A whole `mode: report` config."""

    report: ReportSettings
    mode: str = setting("report", choices=("report",))
    seed: int = 0  # unused: accepted as on every job


def read_evaluations(folder: Path) -> dict[str, dict]:
    """{metric: result} from an eval run's `<metric>.json` files (the per-pair jsonl files are not results)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no evaluation results folder (did the eval stage run?)")
    results = {}
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        if isinstance(result, dict) and "accuracy" in result and "metric" in result:
            results[result["metric"]] = result
    if not results:
        raise FileNotFoundError(f"{folder}: no <metric>.json results")
    return results


def metrics_rows(evaluations: dict[str, dict[str, dict]]) -> list[dict]:
    """One row per metric: accuracy after each stage (None where that stage did not score it) and pair counts."""
    names = sorted({metric for results in evaluations.values() for metric in results})
    rows = []
    for name in names:
        row = {"metric": name, "chance": CHANCE}
        for key, _ in COLUMNS:
            result = evaluations.get(key, {}).get(name)
            row[key] = None if result is None else result["accuracy"]
            row[f"{key}_pairs"] = None if result is None else result["num_pairs"]
        rows.append(row)
    return rows


def pair_scores(folder: Path, metric: str) -> dict[str, float]:
    """{pair id: score} (1 right, 0 wrong, 0.5 tie) from an eval run's `<metric>_pairs.jsonl`."""
    return {row["id"]: row["score"] for row in read_jsonl(folder / f"{metric}_pairs.jsonl")}


def score_changes(before: dict[str, float], after: dict[str, float]) -> list[float]:
    """after - before of every pair scored in both runs."""
    return [after[pair] - before[pair] for pair in before.keys() & after.keys()]


def flips(changes: list[float]) -> tuple[float, float]:
    """(gained, lost): how much the pairs moved towards right and towards wrong."""
    return sum(change for change in changes if change > 0), -sum(change for change in changes if change < 0)


def mcnemar_p(up: int, down: int) -> float:
    """Exact two-sided McNemar (sign) test of `up` pairs that moved towards right against `down` towards wrong:
    the chance of a split at least this uneven if each moved pair were a fair coin."""
    moved = up + down
    if moved == 0:
        return 1.0
    tail = sum(math.comb(moved, k) for k in range(min(up, down) + 1)) / 2**moved
    return min(1.0, 2 * tail)


def add_flips(rows: list[dict], before: Path, after: Path) -> None:
    """Each row's `gained` / `lost` pairs between the two runs, and `p_value`: the McNemar test of the pairs
    whose score rose against those whose score fell (a change of a few pairs of 400 is noise, p near 1)."""
    for row in rows:
        changes = score_changes(pair_scores(before, row["metric"]), pair_scores(after, row["metric"]))
        row["gained"], row["lost"] = flips(changes)
        row["p_value"] = mcnemar_p(sum(change > 0 for change in changes), sum(change < 0 for change in changes))


def metrics_table(rows: list[dict]) -> str:
    """The Markdown table of accuracies (percent), with the change DPO made."""
    titles = " | ".join(title for _, title in COLUMNS)
    lines = [f"| benchmark | chance | {titles} | change | pairs right -> wrong / wrong -> right | p | pairs |"]
    lines.append("|---|---|" + "---|" * len(COLUMNS) + "---|---|---|---|")
    for row in rows:
        values = [_percent(row[key]) for key, _ in COLUMNS]
        change = "" if None in (row["before"], row["after"]) else f"{100 * (row['after'] - row['before']):+.1f}"
        moved = f"{row['lost']:g} / {row['gained']:g}" if "lost" in row else ""
        p_value = f"{row['p_value']:.2g}" if "p_value" in row else ""
        pairs = row["after_pairs"] or row["before_pairs"]
        cells = [row["metric"], f"{100 * row['chance']:.0f}%", *values, change, moved, p_value, str(pairs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def training_summary(name: str, rows: list[dict]) -> dict:
    """Last logged values of a run's metrics.jsonl (steps, losses, DPO rewards), or {} if it has none."""
    train = [row for row in rows if "loss" in row]
    if not train:
        return {}
    last = train[-1]
    summary = {"run": name, "steps": last["step"], "first_loss": train[0]["loss"], "last_loss": last["loss"]}
    for key in ("tokens_seen", "reward_accuracy", "reward_margin"):
        if key in last:
            summary[key] = last[key]
    validation = [row["validation_loss"] for row in rows if "validation_loss" in row]
    if validation:
        summary["first_validation_loss"], summary["last_validation_loss"] = validation[0], validation[-1]
    return summary


def stage_times(pipeline_dir: Path) -> dict[str, float]:
    """Wall seconds per finished stage of the pipeline in `pipeline_dir`, in the order they finished."""
    times = {}
    for done in sorted(pipeline_dir.glob(f"*/{DONE}"), key=lambda path: path.stat().st_mtime):
        seconds = json.loads(done.read_text()).get("stage_seconds")
        if seconds is not None:
            times[done.parent.name] = float(seconds)
    return times


def plot_training(runs: dict[str, list[dict]], path: Path) -> None:
    """Loss curves: pre-training (train and validation) and DPO (loss and reward accuracy)."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    pretrain = runs.get("pretrain", [])
    axes[0].plot(*_series(pretrain, "loss"), label="train loss")
    axes[0].plot(*_series(pretrain, "validation_loss"), "o-", label="validation loss")
    axes[0].set(title="pre-training", xlabel="step", ylabel="cross-entropy (nats/token)")
    dpo = runs.get("dpo", [])
    axes[1].plot(*_series(dpo, "loss"), label="DPO loss")
    axes[1].plot(*_series(dpo, "reward_accuracy"), label="reward accuracy")
    axes[1].set(title="DPO", xlabel="step")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    points = [(row["step"], row[key]) for row in rows if key in row]
    return [step for step, _ in points], [value for _, value in points]


def plot_metrics(rows: list[dict], path: Path) -> None:
    """Accuracy bars per benchmark, after pre-training and after DPO, against chance."""
    figure, axis = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(COLUMNS)
    for offset, (key, title) in enumerate(COLUMNS):
        xs = [index + (offset - (len(COLUMNS) - 1) / 2) * width for index in range(len(rows))]
        axis.bar(xs, [100 * (row[key] or 0.0) for row in rows], width, label=title)
    axis.axhline(100 * CHANCE, color="black", linestyle="--", linewidth=1, label="chance")
    axis.set_xticks(range(len(rows)), [row["metric"] for row in rows])
    axis.set(ylabel="accuracy (%)", ylim=(0, 100), title="held-out pair benchmarks")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def listen_entries(folder: Path, start: Path) -> list[dict]:
    """Per generated continuation: its prompt file, unit counts and its two wav files (relative to `start`)."""
    entries = []
    for number, record in enumerate(read_jsonl(folder / GENERATIONS), start=1):
        if "wav_full" not in record:
            raise ValueError(
                f"{folder / GENERATIONS}:{number}: names no wav files (run generate with generate.vocoder)"
            )
        entries.append(
            {
                "prompt": Path(record["file_name"]).name,
                "prompt_units": len(record["prompt_units"]),
                "units": len(record["units"]),
                "wav_full": _relative(folder / record["wav_full"], start),
                "wav_continuation": _relative(folder / record["wav_continuation"], start),
            }
        )
    if not entries:
        raise FileNotFoundError(f"{folder / GENERATIONS}: no generations to listen to (did the generate stage run?)")
    return entries


def listen_section(entries: list[dict]) -> list[str]:
    """The Markdown lines of the "Listen" section: one table row of links per continuation."""
    lines = ["## Listen", "", "Held-out prompts (their first seconds) continued by the final model and spoken by the"]
    lines += ["generate stage's vocoder; the units and their Auto-BLEU are in its generations.jsonl.", ""]
    lines += ["| prompt | prompt + continuation | continuation alone | units (prompt + new) |", "|---|---|---|---|"]
    for entry in entries:
        full, alone = entry["wav_full"], entry["wav_continuation"]
        lines.append(
            f"| {entry['prompt']} | [{Path(full).name}]({full}) | [{Path(alone).name}]({alone}) "
            f"| {entry['prompt_units']} + {entry['units']} |"
        )
    return lines + [""]


def markdown(
    title: str,
    rows: list[dict],
    summaries: list[dict],
    times: dict,
    plots: list[str],
    commands: str,
    listen: list[dict],
) -> str:
    lines = [f"# {title}", "", metrics_table(rows), "", "Accuracy = how often the model scores the positive of a"]
    lines += ["pair higher (minus the mean per-token NLL); ties count half. Numbers from the eval stages' files;"]
    lines += ["the pairs that changed side show how much of a change is a few pairs moving either way, and p is the"]
    lines += ["exact two-sided McNemar test of those pairs (the chance of a split at least as uneven if DPO moved each"]
    lines += ["of them at random). Above 0.05, pairs moving at random would often give a split this uneven.", ""]
    if summaries:
        lines += ["## Training", "", "| run | steps | first loss | last loss | last validation loss | other |"]
        lines += ["|---|---|---|---|---|---|"]
        for summary in summaries:
            facts = [f"{summary['tokens_seen']:,.0f} tokens seen"] if "tokens_seen" in summary else []
            facts += [f"{key} {summary[key]:.3f}" for key in ("reward_accuracy", "reward_margin") if key in summary]
            other = ", ".join(facts)
            validation = summary.get("last_validation_loss")
            lines.append(
                f"| {summary['run']} | {summary['steps']} | {summary['first_loss']:.3f} | {summary['last_loss']:.3f}"
                f" | {'-' if validation is None else f'{validation:.3f}'} | {other} |"
            )
        lines.append("")
    if times:
        lines += ["## Time", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in times.items()]
        lines += [f"| total | {sum(times.values()):.1f} |", ""]
        lines.append(f"Machine: {platform.machine()}, {jax.device_count()} {jax.devices()[0].platform} device(s).")
        lines.append("")
    lines += ["## Plots", ""] + [f"![{Path(plot).stem}]({plot})" for plot in plots] + [""]
    if listen:
        lines += listen_section(listen)
    if commands.strip():
        lines += ["## Reproduce", "", "```"] + [line.strip() for line in commands.strip().splitlines()] + ["```", ""]
    return "\n".join(lines)


def run(config: ConfigDict, workdir: Path) -> dict:
    """`mode: report`: the config checked into a `ReportJob`, then `write_report`."""
    return write_report(ReportJob.from_config(config, "config"), workdir)


def write_report(job: ReportJob, workdir: Path) -> dict:
    """The report of `job.report`'s folders (plots in `workdir`); returns (and saves as JSON) its numbers."""
    settings = job.report
    workdir = Path(workdir)
    folders = {key: getattr(settings, key) for key in ("before", "after", "pretrain", "dpo")}
    evaluations = {key: read_evaluations(Path(folders[key])) for key, _ in COLUMNS if folders[key]}
    rows = metrics_rows(evaluations)
    if settings.before and settings.after:
        add_flips(rows, Path(settings.before), Path(settings.after))
    runs = {name: read_jsonl(Path(folders[name]) / "metrics.jsonl") for name in ("pretrain", "dpo") if folders[name]}
    summaries = [summary for name, rows_ in runs.items() if (summary := training_summary(name, rows_))]
    out = Path(settings.out_path)
    times = stage_times(Path(settings.pipeline_dir)) if settings.pipeline_dir else {}
    listen = listen_entries(Path(settings.listen), out.parent) if settings.listen else []
    workdir.mkdir(parents=True, exist_ok=True)
    plot_training(runs, workdir / "training.png")
    plot_metrics(rows, workdir / "metrics.png")
    plots = [_relative(workdir / name, out.parent) for name in ("metrics.png", "training.png")]
    write_text(out, markdown(settings.title, rows, summaries, times, plots, settings.commands, listen))
    result = {"metrics": rows, "training": summaries, "stage_seconds": times, "listen": listen, "report": str(out)}
    write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    print(metrics_table(rows))
    print(f"[report] {out}")
    return result


def _relative(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path.resolve())
