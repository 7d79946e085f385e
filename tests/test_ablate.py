"""scripts/ablate.py and t2i_drift/eval/ablation.py: plan checks that name the file and key, the
table over training seeds, the shipped plans, and a run where training is faked (it records each
config and saves a tiny pipeline) so the script's wiring is tested without training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import tiny_pipeline
from test_eval import StubEmbedder, load_script

from t2i_drift import DriftingTransformer2DModel
from t2i_drift.eval.ablation import load_plan, table, training_overrides
from t2i_drift.training.config import load_config

ROOT = Path(__file__).parent.parent
PLANS = sorted((ROOT / "recipes" / "ablations").glob("*.yaml"))


def write_plan(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("config: recipes/missing.yaml\ndata: shapes\nvariants: {a: []}", "config: no such recipe file"),
        ("config: {recipe}\ndata: imagenet\nvariants: {a: []}", "data must be one of"),
        ("config: {recipe}\ndata: shapes\nvariants: {}", "variants must be a non-empty mapping"),
        ("config: {recipe}\ndata: shapes\nvariants: {'a b': []}", "variants.a b: names may use"),
        ("config: {recipe}\ndata: shapes\nvariants: {a: [drift.alpha_power]}", "variants.a must be a list"),
        ("config: {recipe}\ndata: shapes\nvariants: {a: []}\nsteps: 3", "unknown key(s) ['steps']"),
        ("config: {recipe}\ndata: shapes\noverrides: [x]\nvariants: {a: []}", "overrides must be a list"),
    ],
)
def test_bad_plans_name_the_file_and_key(tmp_path, body, message):
    path = write_plan(
        tmp_path / "plan.yaml", body.replace("{recipe}", str(ROOT / "recipes/shapes_32px.yaml"))
    )
    with pytest.raises(ValueError) as err:
        load_plan(path)
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("plan_path", PLANS, ids=[p.stem for p in PLANS])
def test_shipped_plans_load_and_every_variant_builds(plan_path, monkeypatch):
    """Every variant's overrides are valid config keys and valid transformer arguments."""
    monkeypatch.chdir(ROOT)  # plans name their recipe relative to the repository
    plan = load_plan(plan_path.relative_to(ROOT))
    assert next(iter(plan.variants)) == "baseline" and plan.variants["baseline"] == []
    for variant in plan.variants:
        cfg = load_config(plan.config, training_overrides(plan, variant, 1, "runs/x", 5))
        assert (cfg.train.seed, cfg.train.max_steps, cfg.train.output_dir) == (
            1,
            5,
            f"runs/x/{variant}/seed1",
        )
        DriftingTransformer2DModel.from_preset(
            cfg.model.preset, sample_size=16, patch_size=4, **cfg.model.overrides
        )  # an unknown model override raises here


def _eval(held: float, train: float, div: float) -> dict:
    attrs = {a: 1.0 for a in ("count", "colour", "shape", "position", "size")}
    run = {
        "heldout": {**attrs, "shape": held, "all_attributes": held},
        "train": {**attrs, "all_attributes": train},
        "diversity": {"within_prompt": {"pixel_rms": div}},
    }
    return {"runs": [run], "settings": {"seeds": 2, "seed": 0, "guidance_scale": 1.0}}


def test_table_shows_mean_per_seed_values_and_change_against_the_baseline():
    results = {
        "baseline": {0: _eval(0.10, 0.2, 0.05), 1: _eval(0.20, 0.3, 0.07)},
        "alpha_power_5": {0: _eval(0.40, 0.5, 0.01), 1: _eval(0.30, 0.4, 0.03)},
    }
    text = table("shapes", results, {"baseline": [60.0, 120.0], "alpha_power_5": [60.0]})
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    assert "| 15.0% (10.0, 20.0) |" in rows["baseline"] and "(baseline)" in rows["baseline"]
    assert "| 35.0% (40.0, 30.0) |" in rows["alpha_power_5"]
    # the change is that of the mean of the five held-out attributes: shape +20 pts / 5
    assert "| 83.0% (82.0, 84.0) |" in rows["baseline"] and "| +4.0 pts |" in rows["alpha_power_5"]
    assert "| 0.020 (0.010, 0.030) |" in rows["alpha_power_5"]  # diversity stays a distance
    assert rows["baseline"].endswith("| 1.5 min |") and rows["alpha_power_5"].endswith("| 1.0 min |")


@pytest.fixture()
def ablate(monkeypatch):
    """The script as a module with the stub feature encoder and a fake trainer that records each
    config and exports a tiny pipeline where the run would have."""
    module = load_script("ablate")
    module.trained = []

    def fake_train(cfg):
        module.trained.append(cfg)
        out = Path(cfg.train.output_dir)
        tiny_pipeline(16).save_pretrained(out / "pipeline")
        summary = {"steps": cfg.train.max_steps, "train_wall_s": 30.0}
        (out / "run_summary.json").write_text(json.dumps(summary))

    monkeypatch.setattr(module, "train_t2i", fake_train)
    monkeypatch.setattr(module, "EffNetLite0Embedder", StubEmbedder)
    return module


def test_ablate_trains_each_variant_and_seed_then_reuses_everything(ablate, tmp_path, capsys):
    plan = write_plan(
        tmp_path / "plan.yaml",
        f"config: {ROOT / 'recipes/tiny_test.yaml'}\ndata: shapes\n"
        "overrides: [data.name=shapes]\nvariants:\n  baseline: []\n  k5: [drift.alpha_power=5]\n",
    )
    out, doc = tmp_path / "out", tmp_path / "docs" / "ablation"
    argv = [
        "--plan", str(plan), "--max_steps", "3", "--train-seeds", "0", "1", "--out_dir", str(out),
        "--doc", str(doc), "--num", "3", "--seeds", "2", "--diversity-prompts", "2", "--batch-size", "8",
    ]  # fmt: skip
    assert ablate.main(argv) == 0
    runs = [
        (Path(c.train.output_dir).relative_to(out), c.train.seed, c.drift.alpha_power) for c in ablate.trained
    ]
    assert all(c.data.name == "shapes" for c in ablate.trained)  # the shared override (default: openmoji)
    assert runs == [
        (Path("baseline/seed0"), 0, 3.0),
        (Path("baseline/seed1"), 1, 3.0),
        (Path("k5/seed0"), 0, 5.0),
        (Path("k5/seed1"), 1, 5.0),
    ]
    assert all(c.train.max_steps == 3 for c in ablate.trained)
    text = (tmp_path / "docs" / "ablation.md").read_text()
    assert "| k5 | `drift.alpha_power=5` |" in text and "(`train.seed`) and `data.name=shapes`;" in text
    assert "| k5 | 0, 1 |" in text and "+0.0 pts" in text  # the same tiny pipeline everywhere
    assert "python scripts/ablate.py --plan" in text
    capsys.readouterr()

    ablate.trained.clear()
    assert ablate.main(argv) == 0  # a rerun: nothing trains, nothing is evaluated again
    assert ablate.trained == [] and "evaluating" not in capsys.readouterr().out
    shutil.rmtree(out / "k5" / "seed1" / "pipeline")
    assert ablate.main(argv) == 0 and [c.train.seed for c in ablate.trained] == [1]


def test_ablate_rejects_unknown_variants_and_bad_overrides_before_training(ablate, tmp_path, capsys):
    plan = write_plan(
        tmp_path / "plan.yaml",
        f"config: {ROOT / 'recipes/shapes_32px.yaml'}\ndata: shapes\n"
        "variants:\n  a: []\n  b: [drift.nosuch=1]\n",
    )
    base = [
        "--plan",
        str(plan),
        "--max_steps",
        "2",
        "--out_dir",
        str(tmp_path / "out"),
        "--doc",
        str(tmp_path / "d"),
    ]
    for extra, expected in (([], "variants.b"), (["--variants", "c"], "--variants")):
        with pytest.raises(SystemExit) as err:
            ablate.main([*base, *extra])
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.value.code == 2 and expected in message, message
    assert ablate.trained == [] and not (tmp_path / "out").exists()
