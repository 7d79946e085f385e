"""Ablations (scripts/ablate.py): named variants of one recipe, each trained with several training
seeds at equal steps, evaluated with the suite of its data set, reported as mean and per-seed values.

A plan is a YAML file::

    config: recipes/shapes_32px.yaml        # the recipe every variant starts from
    data: shapes                             # the evaluation suite (shapes or openmoji)
    overrides: []                            # optional: dotted overrides every variant shares
    variants:                                # name -> dotted overrides (the first is the baseline)
      baseline: []
      alpha_power_5: [drift.alpha_power=5]

Layout under ``out_dir``: ``<variant>/seed<k>/`` is one training folder (its ``pipeline/`` and
``run_summary.json``), ``<variant>/seed<k>/eval_<data>.json`` its evaluation.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from t2i_drift.eval.comparison import markdown_table
from t2i_drift.eval.suites import DATA

VARIANT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
SHAPES_ATTRIBUTES = ("count", "colour", "shape", "position", "size", "all_attributes")


@dataclass(frozen=True)
class Plan:
    """A parsed plan file. ``variants`` keeps the file's order; the first is the baseline."""

    path: Path
    config: Path
    data: str
    variants: dict[str, list[str]]
    overrides: tuple[str, ...] = ()


def load_plan(path: str | Path) -> Plan:
    """Read and check a plan; every error names the file and the key at fault."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such plan file")
    tree = yaml.safe_load(path.read_text())
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: a plan is a mapping with keys config, data, variants")
    unknown = set(tree) - {"config", "data", "overrides", "variants"}
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {sorted(unknown)}; a plan has config, data, overrides, variants"
        )
    config = Path(str(tree.get("config", "")))
    if not config.is_file():
        raise ValueError(f"{path}: config: no such recipe file: {config}")
    if tree.get("data") not in DATA:
        raise ValueError(f"{path}: data must be one of {list(DATA)}, got {tree.get('data')!r}")
    shared = tree.get("overrides") or []
    if not isinstance(shared, list) or not all(isinstance(o, str) and "=" in o for o in shared):
        raise ValueError(f"{path}: overrides must be a list of 'section.key=value' strings")
    variants = tree.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"{path}: variants must be a non-empty mapping of name -> list of overrides")
    checked: dict[str, list[str]] = {}
    for name, overrides in variants.items():
        if not VARIANT_NAME.match(str(name)):
            raise ValueError(f"{path}: variants.{name}: names may use letters, digits, '_', '-', '.'")
        if overrides is None:
            overrides = []
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise ValueError(f"{path}: variants.{name} must be a list of 'section.key=value' strings")
        checked[str(name)] = list(overrides)
    return Plan(path, config, str(tree["data"]), checked, tuple(shared))


def run_dir(out_dir: str | Path, variant: str, seed: int) -> Path:
    return Path(out_dir) / variant / f"seed{seed}"


def training_overrides(plan: Plan, variant: str, seed: int, out_dir: str | Path, max_steps: int) -> list[str]:
    """The shared overrides, the variant's, then its training seed, folder and step count (later
    ones win)."""
    return [
        *plan.overrides,
        *plan.variants[variant],
        f"train.seed={seed}",
        f"train.output_dir={run_dir(out_dir, variant, seed)}",
        f"train.max_steps={max_steps}",
    ]


# ----------------------------------------------------------------------------------------------
#                                         Report
# ----------------------------------------------------------------------------------------------
def quality(data: str, result: Mapping[str, Any]) -> dict[str, float]:
    """The figures an ablation table shows, from one NFE's evaluation (fractions stay fractions)."""
    if data == "shapes":
        held = result["heldout"]
        out = {f"heldout {a}": float(held[a]) for a in SHAPES_ATTRIBUTES}
        # Short runs sit near 0 on all_attributes; the mean of the five moves first.
        out["heldout mean of 5"] = statistics.fmean(float(held[a]) for a in SHAPES_ATTRIBUTES[:-1])
        out["train all_attributes"] = float(result["train"]["all_attributes"])
    else:
        out = {
            "FD train": float(result["fd_gen_train"]),
            "FD val": float(result["fd_gen_val"]),
            "retrieval top-1": float(result["retrieval_top1"]),
        }
    within = (result.get("diversity") or {}).get("within_prompt") or {}
    if "pixel_rms" in within:
        out["diversity"] = float(within["pixel_rms"])
    return out


def _cell(key: str, values: Sequence[float]) -> str:
    """Mean, then each seed's value in brackets: '61.0% (58.2, 63.8)'."""
    percent = not key.startswith(("FD", "diversity"))
    scale, digits = (100.0, 1) if percent else (1.0, 1 if key.startswith("FD") else 3)
    mean = f"{scale * statistics.fmean(values):.{digits}f}" + ("%" if percent else "")
    if len(values) == 1:
        return mean
    return mean + " (" + ", ".join(f"{scale * v:.{digits}f}" for v in values) + ")"


def table(
    data: str, results: Mapping[str, Mapping[int, Mapping[str, Any]]], walls: Mapping[str, Sequence[float]]
) -> str:
    """Markdown table: one row per variant (plan order); each cell the mean over training seeds and
    the per-seed values; the last column the change of the main figure against the first variant.

    Args:
        results: variant -> seed -> evaluation (``evaluate_pipeline`` output, first NFE used).
        walls: variant -> the training wall time of each seed (s).
    """
    rows, header, base = [], None, None
    main = "heldout mean of 5" if data == "shapes" else "FD train"
    for variant, by_seed in results.items():
        figures = [quality(data, e["runs"][0]) for _, e in sorted(by_seed.items())]
        keys = list(figures[0])
        header = header or ["variant", "seeds", *keys, f"change of {main}", "train wall (mean)"]
        mean_main = statistics.fmean(f[main] for f in figures)
        base = mean_main if base is None else base
        delta = mean_main - base
        change = f"{100 * delta:+.1f} pts" if data == "shapes" else f"{delta:+.1f}"
        wall = f"{statistics.fmean(walls[variant]) / 60:.1f} min" if walls.get(variant) else "-"
        rows.append(
            [
                variant,
                ", ".join(str(s) for s in sorted(by_seed)),
                *[_cell(k, [f[k] for f in figures]) for k in keys],
                change if variant != next(iter(results)) else "(baseline)",
                wall,
            ]
        )
    return markdown_table(header or ["variant"], rows)


def write_report(
    doc: str | Path,
    plan: Plan,
    results: Mapping[str, Mapping[int, Mapping[str, Any]]],
    walls: Mapping[str, Sequence[float]],
    max_steps: int,
    command: str,
) -> Path:
    """``<doc>.md``: what each variant changes, the table, and the command that reproduces it."""
    md = Path(doc).with_suffix(".md")
    md.parent.mkdir(parents=True, exist_ok=True)
    settings = next(iter(next(iter(results.values())).values()))["settings"]
    shared = f" and {', '.join(f'`{o}`' for o in plan.overrides)}" if plan.overrides else ""
    lines = [
        f"# Ablation: {plan.path.stem} ({plan.data})",
        "",
        f"Every variant trains from `{plan.config}` for {max_steps} steps with each training seed "
        f"(`train.seed`){shared}; only the overrides below differ. Evaluation: {settings['seeds']} "
        f"images per caption, noise seed {settings['seed']}, guidance scale {settings['guidance_scale']}. "
        "Each cell: the mean over training seeds, then each seed's value.",
        "",
        "| variant | overrides |",
        "|---|---|",
        *[f"| {v} | {', '.join(f'`{o}`' for o in plan.variants[v]) or '(none)'} |" for v in results],
        "",
        table(plan.data, results, walls),
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    md.write_text("\n".join(lines))
    return md


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None
