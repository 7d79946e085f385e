"""scripts/compare_objectives.py: the report writer on synthetic results, argument checks before any
training, and a rerun over already-exported pipelines (nothing is trained here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_pipeline
from PIL import Image
from test_eval import StubEmbedder, load_script, tiny_flow_matching_pipeline

from t2i_drift.eval.comparison import STYLE, objective_nfes, table_rows, training_overrides, write_report

RECIPES = Path(__file__).parent.parent / "recipes"
NFES = (1, 2, 4, 8, 25)


def _run(nfe: int, fd: float, acc: float, div: float) -> dict:
    attrs = {"count": 1.0, "colour": 1.0, "shape": acc, "position": 1.0, "size": 0.9, "all_attributes": acc}
    return {
        "nfe": nfe,
        "transformer_passes_per_image": nfe,
        "images": 10,
        "latency_s_per_image": 0.001 * nfe,
        "images_per_s": 1000 / nfe,
        "fd_gen_train": fd,
        "fd_gen_val": fd + 10,
        "subject_accuracy": acc,
        "detail": 2 * acc,
        "retrieval_top1": 0.01,
        "retrieval_top5": 0.05,
        "train": attrs,
        "heldout": {**attrs, "all_attributes": acc / 2},
        "diversity": {"within_prompt": {"pixel_rms": div, "effnet_l2": 10 * div}, "between_prompts": None},
    }


def synthetic_evals(data: str) -> dict:
    reference = {
        "num_train": 1000,
        "num_val": 220,
        "fd_real_train_val": 40.0,
        "retrieval_chance_top1": 0.001,
        "retrieval_chance_top5": 0.005,
        "scenes": {"train": 788, "heldout": 472},
        "real_renders": {s: {"all_attributes": 1.0, "shape": 1.0} for s in ("train", "heldout")},
        "diversity_split": "train",
        "subjects": 14,
        "images_per_subject": 32,
        "subject_accuracy_real_val": 0.9,
        "subject_chance": 1 / 14,
        "diversity_prompts": 100,
        "renders_per_caption": 4,
        "diversity": {"within_prompt": {"pixel_rms": 0.05, "effnet_l2": 4.0}, "between_prompts": None},
    }
    settings = {"seeds": 2, "seed": 0, "guidance_scale": 1.0, "batch_size": 100}
    fm = [_run(n, 250 / n**0.3, 0.04 * n**0.4, 0.2) for n in NFES]
    runs = {
        "drifting": [_run(1, 139.1, 0.30, 0.01)],
        "regression": [_run(1, 170.0, 0.10, 0.0)],
        "flow_matching": fm,
    }
    return {name: {"reference": reference, "settings": settings, "runs": r} for name, r in runs.items()}


@pytest.mark.parametrize(
    ("summary", "shown"),
    [
        ({"steps": 1000, "steps_this_run": 1000, "train_wall_s": 60.0, "train_wall_s_total": 60.0}, "60 s"),
        # resumed twice: every session counts
        (
            {"steps": 3000, "steps_this_run": 1000, "train_wall_s": 600.0, "train_wall_s_total": 1800.0},
            "30.0 min",
        ),
        # resumed from a checkpoint without the record: only the last session is known, and marked
        (
            {"steps": 3000, "steps_this_run": 1000, "train_wall_s": 600.0},
            "10.0 min (last 1000 steps: resumed)",
        ),
        (
            {"steps": 3000, "steps_this_run": 0, "train_wall_s": 0.1, "train_wall_s_total": None},
            "0 s (last 0 steps: resumed)",
        ),
    ],
)
def test_train_wall_column_counts_every_session_of_a_resumed_run(summary, shown):
    evals = synthetic_evals("openmoji")
    header, rows = table_rows("openmoji", evals, {o: summary for o in evals})
    assert rows[0][header.index("train wall time")] == shown


def _coloured(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """(y, x) of the pixels of exactly ``colour``."""
    return np.argwhere((image == np.array(colour)).all(axis=-1))


@pytest.mark.parametrize("data", ["openmoji", "shapes", "photos"])
def test_report_table_and_plot_from_synthetic_results(tmp_path, data):
    evals = synthetic_evals(data)
    summaries = {
        o: {"steps": 1000, "steps_this_run": 1000, "train_wall_s": 60.0 + i} for i, o in enumerate(evals)
    }
    command = "python scripts/compare_objectives.py --config recipes/x.yaml --data " + data
    md, png = write_report(
        tmp_path / "docs" / "cmp.md", data, evals, summaries, command, "recipes/x.yaml", 1000
    )
    assert (md.name, png.name) == ("cmp.md", "cmp.png")
    text = md.read_text()
    assert "```bash\n" + command + "\n```" in text and "![" in text and "(cmp.png)" in text
    header, rows = table_rows(data, evals, summaries)
    assert [r[:2] for r in rows[:7]] == [["drifting", "1"], ["regression", "1"]] + [
        ["flow matching", str(n)] for n in NFES
    ]
    assert len(rows) == (7 if data == "openmoji" else 8)  # shapes, photos: plus a row of real images
    assert all("| " + " | ".join(r) + " |" in text for r in rows)
    drifting = rows[0]
    assert (
        drifting[4] == "60 s"
        and drifting[-1] == "1.00 ms"
        and drifting[header.index("diversity pixel RMS")] == "0.0100"
    )
    if data == "openmoji":
        assert drifting[5] == "139.1 / 149.1" and "**40.0**" in text and "not FID" in text
    elif data == "photos":
        assert drifting[5:8] == ["149.1", "30.0%", "0.60"] and "chance 7.1%" in text
        assert (
            rows[-1][0].startswith("real validation crops") and rows[-1][5] == "40.0 (training-split crops)"
        )
    else:
        assert drifting[5] == "30.0% / 15.0%" and rows[-1][0].startswith("real renders")

    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (540, 900, 3)
    axes = image[:, :640]  # left of the legend
    fm, dr, rg = (_coloured(axes, STYLE[o][0]) for o in ("flow_matching", "drifting", "regression"))
    assert len(fm) and len(dr) and len(rg)
    assert np.ptp(fm[:, 1]) > 400  # flow matching: a line across the NFE axis
    assert np.ptp(dr[:, 1]) < 20 and np.ptp(rg[:, 1]) < 20  # one-step objectives: one point each
    assert abs(dr[:, 1].mean() - fm[:, 1].min()) < 15  # ... at NFE 1, where the line starts
    # the y axis is the main metric: FD (openmoji, photos) drifting 139 < regression 170; shapes higher
    assert (dr[:, 0].mean() > rg[:, 0].mean()) == (data != "shapes")


def test_training_overrides_and_nfes():
    overrides = training_overrides("regression", "runs/cmp", 300, ["train.batch_size=8", "train.max_steps=5"])
    assert overrides[-3:] == [
        "objective.name=regression",
        "train.output_dir=runs/cmp/regression",
        "train.max_steps=300",
    ]
    assert objective_nfes("drifting", [4, 1, 2]) == [1] and objective_nfes("flow_matching", [4, 1, 2, 4]) == [
        1,
        2,
        4,
    ]
    with pytest.raises(ValueError, match="objective"):
        training_overrides("diffusion", "runs", 1)


@pytest.fixture()
def compare(monkeypatch):
    """The script as a module, with training forbidden and the stub feature encoder."""
    module = load_script("compare_objectives")

    def no_training(cfg):
        raise AssertionError(f"training was started for {cfg.train.output_dir}")

    monkeypatch.setattr(module, "train_t2i", no_training)
    monkeypatch.setattr(module, "EffNetLite0Embedder", StubEmbedder)
    return module


@pytest.mark.parametrize(
    ("extra", "argument"),
    [
        (["--config", "recipes/missing.yaml"], "--config"),
        (["--nfe", "0"], "--nfe"),
        (["--data", "openmoji"], "--data"),  # the shapes recipe trains on shapes
        (["--seeds", "0"], "--seeds"),
        (["--doc", "docs/x.png"], "--doc"),
        (["nosuch.key=1"], "nosuch"),
        (["objective.name=diffusion"], "objective.name"),
    ],
)
def test_bad_arguments_stop_before_training(compare, tmp_path, capsys, extra, argument):
    base = {"--config": str(RECIPES / "shapes_32px.yaml"), "--data": "shapes", "--doc": str(tmp_path / "doc")}
    for flag in ("--config", "--data", "--doc", "--seeds", "--nfe"):
        if flag in extra:
            base[flag] = extra[extra.index(flag) + 1]
    overrides = [x for x in extra if "=" in x]
    argv = [*overrides, "--max_steps", "3", "--out_dir", str(tmp_path / "out")]
    for flag, value in base.items():
        argv += [flag, value]
    with pytest.raises(SystemExit) as err:
        compare.main(argv)
    message = capsys.readouterr().err.strip().splitlines()[-1]  # the usage line above names every flag
    assert err.value.code == 2 and "error:" in message and argument in message, message
    assert not (tmp_path / "out").exists()


def test_existing_runs_are_reused_and_reported(compare, tmp_path, capsys):
    """Three exported pipelines and run summaries: nothing trains, each is evaluated (flow matching at
    two NFE), the report is written, and a second run reuses the saved evaluations."""
    out = tmp_path / "out"
    drifting = tiny_pipeline(16)
    for objective, pipe in (
        ("drifting", drifting),
        ("regression", drifting),
        ("flow_matching", tiny_flow_matching_pipeline(16)),
    ):
        pipe.save_pretrained(out / objective / "pipeline")
        summary = {"steps": 2, "steps_this_run": 2, "train_wall_s": 12.0, "samples_per_s": 3.0}
        (out / objective / "run_summary.json").write_text(json.dumps(summary))
    doc = tmp_path / "docs" / "objectives"
    argv = [
        "data.name=shapes",
        "--config", str(RECIPES / "tiny_test.yaml"), "--data", "shapes", "--max_steps", "2",
        "--out_dir", str(out), "--doc", str(doc), "--nfe", "1", "2",
        "--num", "3", "--seeds", "2", "--diversity-prompts", "2", "--batch-size", "8",
    ]  # fmt: skip
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("exists, not retrained") == 3 and "reusing" not in printed
    text = (doc.parent / "objectives.md").read_text()
    for row in (
        "| drifting | 1 | 1 | 2 | 12 s |",
        "| regression | 1 | 1 | 2 | 12 s |",
        "| flow matching | 2 | 2 | 2 |",
    ):
        assert row in text
    assert "python scripts/compare_objectives.py data.name=shapes --config" in text
    assert Image.open(doc.parent / "objectives.png").size == (900, 540)
    saved = json.loads((out / "flow_matching" / "eval_shapes.json").read_text())
    assert [r["nfe"] for r in saved["runs"]] == [1, 2] and saved["pipeline"] == "FlowMatchingPipeline"

    assert compare.main(argv) == 0  # a rerun: every evaluation is reused
    assert capsys.readouterr().out.count("reusing") == 3
    shutil.rmtree(out / "regression" / "pipeline")  # a missing pipeline trains again
    with pytest.raises(AssertionError, match="training was started"):
        compare.main(argv)


def test_shapes_with_omitted_attributes_evaluates_the_recipes_captions(compare, tmp_path):
    """A recipe whose captions leave out the position: the evaluation takes data.shapes_omit from the
    recipe, scores any scene a caption allows and reports the coverage column."""
    out = tmp_path / "out"
    tiny_pipeline(16).save_pretrained(out / "drifting" / "pipeline")
    (out / "drifting" / "run_summary.json").write_text(json.dumps({"steps": 2, "train_wall_s": 5.0}))
    doc = tmp_path / "omit"
    argv = [
        "data.name=shapes", "data.shapes_omit=[position]",
        "--config", str(RECIPES / "tiny_test.yaml"), "--data", "shapes", "--max_steps", "2",
        "--objectives", "drifting", "--out_dir", str(out), "--doc", str(doc),
        "--num", "2", "--seeds", "2", "--diversity-prompts", "2", "--batch-size", "8",
    ]  # fmt: skip
    assert compare.main(argv) == 0
    saved = json.loads((out / "drifting" / "eval_shapes.json").read_text())
    assert saved["settings"]["shapes_omit"] == ["position"] and saved["reference"]["captions"]["train"] == 2
    text = (tmp_path / "omit.md").read_text()
    assert "coverage train / held-out" in text and "Captions leave out position" in text
    assert "real renders (scenes drawn at random, 2 per caption)" in text
