"""Comparing training objectives at equal steps (scripts/compare_objectives.py): run folders, cached
evaluations, and the report: a Markdown table and a plot of the main quality metric against NFE.

Layout under ``out_dir``: ``<objective>/`` is the objective's training output folder (its
``pipeline/`` and ``run_summary.json``), ``<objective>/eval_<data>.json`` its evaluation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t2i_drift.eval.plot import Reference, Series, line_plot

OBJECTIVES = ("drifting", "regression", "flow_matching")
ONE_STEP_OBJECTIVES = ("drifting", "regression")
"""Objectives whose generator samples in one transformer pass (evaluated at NFE 1 only)."""

STYLE = {  # plot colour, marker and pixel shift (one-step points at NFE 1 side by side) per objective
    "drifting": ((214, 39, 40), "square", -8),
    "regression": ((44, 160, 44), "triangle", 8),
    "flow_matching": ((31, 119, 180), "circle", 0),
}
LABELS = {"drifting": "drifting", "regression": "regression", "flow_matching": "flow matching"}


@dataclass(frozen=True)
class MainMetric:
    """The figure plotted against NFE: ``path`` into one NFE's result dict."""

    path: tuple[str, ...]
    label: str
    higher_is_better: bool

    def of(self, result: Mapping[str, Any]) -> float | None:
        value: Any = result
        for key in self.path:
            value = value.get(key) if isinstance(value, Mapping) else None
        return None if value is None else float(value)


MAIN_METRIC = {
    "openmoji": MainMetric(("fd_gen_train",), "FD-EffNetLite0, training captions", False),
    "shapes": MainMetric(("heldout", "all_attributes"), "all attributes right, held-out scenes", True),
    "photos": MainMetric(("fd_gen_val",), "FD-EffNetLite0, validation crops", False),
}


# ----------------------------------------------------------------------------------------------
#                                       Run folders
# ----------------------------------------------------------------------------------------------
def run_dir(out_dir: str | Path, objective: str) -> Path:
    return Path(out_dir) / objective


def pipeline_dir(out_dir: str | Path, objective: str) -> Path:
    return run_dir(out_dir, objective) / "pipeline"


def is_trained(out_dir: str | Path, objective: str) -> bool:
    """True when the objective's exported pipeline exists (its training is then skipped)."""
    return (pipeline_dir(out_dir, objective) / "model_index.json").is_file()


def training_overrides(
    objective: str, out_dir: str | Path, max_steps: int, overrides: Sequence[str] = ()
) -> list[str]:
    """The user's overrides, then the objective, its output folder and the step count (these win)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return [
        *overrides,
        f"objective.name={objective}",
        f"train.output_dir={run_dir(out_dir, objective)}",
        f"train.max_steps={max_steps}",
    ]


def objective_nfes(objective: str, nfes: Sequence[int]) -> list[int]:
    """NFE values an objective is evaluated at: 1 for one-step objectives, every ``nfes`` otherwise."""
    return [1] if objective in ONE_STEP_OBJECTIVES else sorted(set(nfes))


def read_run_summary(out_dir: str | Path, objective: str) -> dict[str, Any]:
    """``<out_dir>/<objective>/run_summary.json`` (``train_wall_s``, ``steps``, ...), or {} if absent."""
    path = run_dir(out_dir, objective) / "run_summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def eval_path(out_dir: str | Path, objective: str, data: str) -> Path:
    return run_dir(out_dir, objective) / f"eval_{data}.json"


def cached_eval(
    out_dir: str | Path, objective: str, data: str, settings: Mapping[str, Any], nfes: Sequence[int]
) -> dict[str, Any] | None:
    """A saved evaluation of the objective's current pipeline with the same settings and NFE, or None."""
    path = eval_path(out_dir, objective, data)
    index = pipeline_dir(out_dir, objective) / "model_index.json"
    if not path.is_file() or not index.is_file() or path.stat().st_mtime < index.stat().st_mtime:
        return None
    saved = json.loads(path.read_text())
    if saved.get("settings") != json.loads(json.dumps(dict(settings))) or [
        r["nfe"] for r in saved.get("runs", [])
    ] != list(nfes):
        return None
    return saved


# ----------------------------------------------------------------------------------------------
#                                         Report
# ----------------------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _wall(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _train_wall(summary: Mapping[str, Any]) -> str:
    """The run's training wall time over all its sessions; a run resumed from a checkpoint that
    predates that record shows its last session's time, marked."""
    if summary.get("train_wall_s_total") is not None:
        return _wall(summary["train_wall_s_total"])
    wall = _wall(summary.get("train_wall_s"))
    if summary.get("steps_this_run", summary.get("steps")) == summary.get("steps"):
        return wall
    return f"{wall} (last {summary['steps_this_run']} steps: resumed)"


def _within(result: Mapping[str, Any]) -> Mapping[str, Any]:
    return (result.get("diversity") or {}).get("within_prompt") or {}


def table_rows(
    data: str, evals: Mapping[str, Mapping[str, Any]], summaries: Mapping[str, Mapping[str, Any]]
) -> tuple[list[str], list[list[str]]]:
    """Markdown table header and rows: one row per (objective, NFE), objectives in OBJECTIVES order,
    and for shapes a last row with the real renders (the checker's ceiling, their diversity); for
    shapes with under-specified captions, a column with the coverage of each caption's scenes."""
    omitted = data == "shapes" and any(e["reference"].get("shapes_omit") for e in evals.values())
    if data == "openmoji":
        metrics = ["FD-EffNetLite0 train / val", "retrieval top-1 / top-5"]
    elif data == "shapes":
        metrics = ["all attributes train / held-out", "held-out count / colour / shape / position / size"]
        if omitted:
            metrics.append("coverage train / held-out")
    elif data == "photos":
        metrics = ["FD-EffNetLite0 val", "subject accuracy", "detail"]
    else:
        raise ValueError(f"data must be openmoji, shapes or photos, got {data!r}")
    header = [
        "objective",
        "NFE",
        "passes / image",
        "train steps",
        "train wall time",
        *metrics,
        "diversity pixel RMS",
        "diversity EffNet L2",
        "latency / image",
    ]
    rows = []
    for objective in [o for o in OBJECTIVES if o in evals]:
        summary = summaries.get(objective, {})
        for r in evals[objective]["runs"]:
            if data == "openmoji":
                quality = [
                    f"{_num(r['fd_gen_train'])} / {_num(r['fd_gen_val'])}",
                    f"{_pct(r['retrieval_top1'])} / {_pct(r['retrieval_top5'])}",
                ]
            elif data == "photos":
                quality = [_num(r["fd_gen_val"]), _pct(r["subject_accuracy"]), _num(r["detail"], 2)]
            else:
                held = r["heldout"]
                quality = [
                    f"{_pct(r['train']['all_attributes'])} / {_pct(held['all_attributes'])}",
                    " / ".join(_pct(held[a]) for a in ("count", "colour", "shape", "position", "size")),
                ]
                if omitted:
                    quality.append(f"{_pct(r['train'].get('coverage'))} / {_pct(held.get('coverage'))}")
            within = _within(r)
            rows.append(
                [
                    LABELS[objective],
                    str(r["nfe"]),
                    str(r["transformer_passes_per_image"]),
                    str(summary.get("steps", "-")),
                    _train_wall(summary),
                    *quality,
                    _num(within.get("pixel_rms"), 4),
                    _num(within.get("effnet_l2"), 2),
                    f"{1000 * r['latency_s_per_image']:.2f} ms",
                ]
            )
    if data == "photos" and evals:
        ref = next(iter(evals.values()))["reference"]
        div = (ref["diversity"] or {}).get("within_prompt") or {}
        rows.append(
            [
                f"real validation crops ({ref['images_per_subject']} per subject)",
                *["-"] * 4,
                f"{_num(ref['fd_real_train_val'])} (training-split crops)",
                _pct(ref["subject_accuracy_real_val"]),
                "1.00",
                _num(div.get("pixel_rms"), 4),
                _num(div.get("effnet_l2"), 2),
                "-",
            ]
        )
    if data == "shapes" and evals:
        ref = next(iter(evals.values()))["reference"]
        real, div = ref["real_renders"], (ref["diversity"] or {}).get("within_prompt") or {}
        held = real.get("heldout", {})
        label = f"real renders ({ref['renders_per_caption']} per caption)"
        coverage = []
        if omitted:
            label = f"real renders (scenes drawn at random, {ref['real_renders_per_caption']} per caption)"
            coverage = [f"{_pct(real.get('train', {}).get('coverage'))} / {_pct(held.get('coverage'))}"]
        rows.append(
            [
                label,
                "-",
                "-",
                "-",
                "-",
                f"{_pct(real.get('train', {}).get('all_attributes'))} / {_pct(held.get('all_attributes'))}",
                " / ".join(_pct(held.get(a)) for a in ("count", "colour", "shape", "position", "size")),
                *coverage,
                _num(div.get("pixel_rms"), 4),
                _num(div.get("effnet_l2"), 2),
                "-",
            ]
        )
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot_main_metric(data: str, evals: Mapping[str, Mapping[str, Any]], path: str | Path, title: str) -> None:
    """The main metric against NFE (log2 axis): flow matching as a line over its NFE, each one-step
    objective as a marked point at NFE 1, OpenMoji's real-vs-real floor as a dashed line."""
    metric = MAIN_METRIC[data]
    series = []
    for objective in [o for o in OBJECTIVES if o in evals]:
        runs = evals[objective]["runs"]
        colour, marker, dx = STYLE[objective]
        series.append(
            Series(
                label=f"{LABELS[objective]}" + ("" if len(runs) > 1 else " (1 step)"),
                xs=[r["nfe"] for r in runs],
                ys=[metric.of(r) for r in runs],
                colour=colour,
                marker=marker,
                line=len(runs) > 1,
                dx=0 if len(runs) > 1 else dx,
            )
        )
    references = []
    if data in ("openmoji", "photos") and evals:
        floor = next(iter(evals.values()))["reference"]["fd_real_train_val"]
        references.append(Reference("real vs real floor", floor))
    nfes = sorted({r["nfe"] for e in evals.values() for r in e["runs"]})
    direction = "higher" if metric.higher_is_better else "lower"
    y_label = f"{metric.label} ({direction} is better)"
    if metric.path[-1] == "all_attributes":  # accuracies: plot in percent
        series = [
            Series(
                s.label,
                s.xs,
                [None if y is None else 100 * y for y in s.ys],
                s.colour,
                s.marker,
                s.line,
                s.dx,
            )
            for s in series
        ]
        y_label = f"{metric.label} (%, {direction} is better)"
    x_label = "NFE: sampling steps per image (log2 scale)"
    line_plot(series, path, x_label, y_label, title, True, nfes, references)


def write_report(
    doc: str | Path,
    data: str,
    evals: Mapping[str, Mapping[str, Any]],
    summaries: Mapping[str, Mapping[str, Any]],
    command: str,
    recipe: str,
    max_steps: int,
    conditions: str = "",
) -> tuple[Path, Path]:
    """Write ``<doc>.md`` (the table, the reference figures, the plot, the command) and ``<doc>.png``.

    Args:
        doc: the path without extension (``docs/NAME``; a ``.md`` suffix is dropped).
        evals: objective -> :func:`t2i_drift.eval.suites.evaluate_pipeline` result.
        summaries: objective -> its run_summary.json.
        command: the exact command line that produced the results.
    Returns:
        (markdown path, png path).
    """
    base = Path(doc)
    if base.suffix in (".md", ".png"):
        base = base.with_suffix("")
    md, png = base.with_suffix(".md"), base.with_suffix(".png")
    md.parent.mkdir(parents=True, exist_ok=True)
    names = ", ".join(LABELS[o] for o in OBJECTIVES if o in evals)
    title = f"{names} on {data}: {max_steps} training steps each"
    plot_main_metric(data, evals, png, title)
    header, rows = table_rows(data, evals, summaries)
    first = next(iter(evals.values()))
    ref, settings = first["reference"], first["settings"]
    lines = [
        f"# Objectives at equal steps: {names} ({data})",
        "",
        f"Each objective trained from `{recipe}` for {max_steps} steps with the same seed and overrides "
        "(`objective.name` is the only difference). Drifting and regression sample in one transformer "
        "pass; flow matching is evaluated at each NFE (sampling steps; `passes / image` doubles when "
        "classifier-free guidance is above 1). Train wall time is `train_wall_s_total` of each run's "
        "`run_summary.json` (every session of a resumed run). "
        f"Guidance scale {settings['guidance_scale']}, {settings['seeds']} images per caption, "
        f"noise seed {settings['seed']}, batch {settings['batch_size']}.",
        "",
        markdown_table(header, rows),
        "",
    ]
    if data == "openmoji":
        between = (ref["diversity"] or {}).get("between_prompts") or {}
        lines += [
            f"FD-EffNetLite0 uses one image per caption: {ref['num_train']} training captions against "
            f"their real images, {ref['num_val']} validation captions against theirs. Floor (the real "
            f"training images against the real validation images): **{ref['fd_real_train_val']:.1f}**. "
            f"Retrieval chance: {_pct(ref['retrieval_chance_top1'])} / {_pct(ref['retrieval_chance_top5'])}.",
            "",
            f"Diversity: {settings['seeds']} images for each of {ref['diversity_prompts']} training "
            "captions. "
            "OpenMoji has one image per caption, so there is no real within-caption figure; for scale, "
            f"real images of different captions are {_num(between.get('pixel_rms'), 4)} apart in pixel RMS "
            f"and {_num(between.get('effnet_l2'), 2)} in EffNet L2.",
        ]
    elif data == "photos":
        lines += [
            f"{ref['subjects']} photo subjects, {ref['images_per_subject']} generated images each against "
            "as many validation crops of the subject (other crops of the same photographs). FD-EffNetLite0 "
            "over all subjects; the last row's FD is training-split crops against validation crops "
            "(the floor). "
            "Subject accuracy: the generated image's nearest reference crop (cosine, EfficientNet-Lite0) "
            f"shows its subject (chance {_pct(ref['subject_chance'])}). Detail: neighbouring-pixel "
            "difference energy over the real crops' (1: as detailed as real, near 0: a blur).",
        ]
    elif ref.get("shapes_omit"):
        captions = ref.get("captions", {})
        lines += [
            f"Captions leave out {' and '.join(ref['shapes_omit'])} (`data.shapes_omit`), so each caption "
            "describes several scenes. Accuracy: the analytic checker on "
            f"{settings['seeds']} images per caption, {captions.get('train', '-')} training and "
            f"{captions.get('heldout', '-')} held-out captions ({ref['scenes'].get('train', '-')} and "
            f"{ref['scenes'].get('heldout', '-')} scenes); an image is scored against the scene of its "
            "caption it matches best. Coverage: the share of a caption's scenes that at least one of its "
            "images draws fully right, averaged over captions. The last row scores real renders of scenes "
            "drawn at random from each caption's scenes, as many per caption as the generators get.",
        ]
    else:
        lines += [
            f"Accuracy: the analytic checker on {settings['seeds']} images per scene, "
            f"{ref['scenes'].get('train', '-')} training and {ref['scenes'].get('heldout', '-')} held-out "
            "scenes (held-out scenes use colour-shape pairs never seen in training). The last row is the "
            "checker on real renders (its ceiling) and the diversity of jittered real renders of one "
            f"caption, over the same {ref['diversity_prompts']} {ref['diversity_split']} captions as the "
            "generated diversity.",
        ]
    lines += [
        "",
        "Diversity: mean pairwise distance between the images of one caption; pixel RMS in [-1, 1] "
        "units, EffNet L2 between pooled EfficientNet-Lite0 features. Latency: seconds per image "
        "around the pipeline calls after one warm-up call, at the batch size above. FD-EffNetLite0 is "
        "a Frechet distance in EfficientNet-Lite0 features, not FID.",
        "",
        f"![{MAIN_METRIC[data].label} against NFE]({png.name})",
        "",
        f"Plot: {MAIN_METRIC[data].label} against NFE (log2 axis).",
    ]
    if conditions:
        lines += ["", f"Conditions: {conditions}"]
    lines += ["", "```bash", command, "```", ""]
    md.write_text("\n".join(lines))
    return md, png
