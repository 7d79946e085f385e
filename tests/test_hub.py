"""Hub layout and upload: both diffusers entry points load our classes in a fresh process and give
the same images; load_pipeline verifies the re-export files; nothing foreign is ever replaced; a
dry run stages exactly the upload; the card carries the Hub metadata."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_python, tiny_pipeline
from huggingface_hub import ModelCard

from t2i_drift import load_pipeline
from t2i_drift.hub import push_to_hub, write_hub_layout
from t2i_drift.model_card import render_model_card
from t2i_drift.text import TextConditioner, TextEncoderSlot
from t2i_drift.training.config import Config
from t2i_drift.training.export import export_pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    pipe = tiny_pipeline()
    cfg = Config()
    cfg.data.resolution, cfg.text.max_length, cfg.eval.samples_per_grid_prompt = 16, 16, 2
    conditioner = TextConditioner([TextEncoderSlot(pipe.text_encoder, pipe.tokenizer, 16)])
    run_info = {"device": "CPU", "num_processes": 1, "train_wall_s": 90.0}
    export_pipeline(cfg, pipe.transformer, conditioner, root / "standard", steps=3, run_info=run_info)
    files = write_hub_layout(root / "standard", root / "hub")
    return root, files


def test_hub_layout_files_and_index(folders):
    root, files = folders
    assert {"pipeline_drifting.py", "transformer/transformer_drifting.py", "model_index.json"} <= set(files)
    index = json.loads((root / "hub" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_drifting", "DriftingPipeline"]
    assert index["transformer"] == ["transformer_drifting", "DriftingTransformer2DModel"]
    standard = json.loads((root / "standard" / "model_index.json").read_text())
    assert standard["transformer"][0] == "t2i_drift.models.transformer_drifting"  # untouched source
    assert "import" in (root / "hub" / "pipeline_drifting.py").read_text()


def test_both_entry_points_load_our_classes_with_identical_images(folders, tmp_path):
    root, _ = folders
    code = """
        import sys, numpy as np, torch
        from diffusers import DiffusionPipeline
        kind, path, out = sys.argv[1:4]
        if kind == "standard":
            from t2i_drift import DriftingPipeline
            pipe = DriftingPipeline.from_pretrained(path)
        else:  # no t2i_drift import here: diffusers finds the classes through the repository's .py files
            pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        images = pipe("teapot", num_images_per_prompt=2, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
        np.save(out, images)
        print(type(pipe).__module__, type(pipe).__name__, type(pipe.transformer).__module__)
    """
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"))
    outputs = {}
    for kind in ("standard", "hub"):
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                __import__("textwrap").dedent(code),
                kind,
                str(root / kind),
                str(tmp_path / kind),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[kind] = proc.stdout.split()
    for kind in ("standard", "hub"):
        assert outputs[kind] == [
            "t2i_drift.pipelines.pipeline_drifting",
            "DriftingPipeline",
            "t2i_drift.models.transformer_drifting",
        ]
    import numpy as np

    np.testing.assert_array_equal(np.load(tmp_path / "standard.npy"), np.load(tmp_path / "hub.npy"))


def test_hub_layout_needs_trust_remote_code(folders):
    root, _ = folders
    with pytest.raises(AssertionError, match="trust_remote_code"):
        run_python(f"""
            from diffusers import DiffusionPipeline
            DiffusionPipeline.from_pretrained({str(root / "hub")!r})
        """)


def test_dry_run_stages_exactly_the_upload_and_points_the_card_at_the_repo(folders, tmp_path):
    root, files = folders
    staged = push_to_hub(
        root / "standard", "someone/drifting-test", staging_dir=tmp_path / "up", dry_run=True
    )
    assert staged == files
    assert (
        sorted(str(p.relative_to(tmp_path / "up")) for p in (tmp_path / "up").rglob("*") if p.is_file())
        == files
    )
    card = ModelCard.load(tmp_path / "up" / "README.md")
    assert 'from_pretrained("someone/drifting-test"' in card.text
    assert str(root) not in card.text
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    assert card.data.license == "cc-by-sa-4.0" and card.data.datasets is None  # OpenMoji is not a Hub dataset
    assert card.data.text_encoder == "sentence-transformers/all-MiniLM-L6-v2"
    assert "trust_remote_code=True" in card.text and "![samples](samples.png)" in card.text
    assert card.data.widget[0]["output"]["url"] == "images/sample_0.png" and "images/sample_0.png" in files
    assert "training: 3 steps on CPU, 2 min" in card.text


def test_card_lists_a_hub_dataset_and_its_attribution():
    cfg = Config().to_dict()
    cfg["data"].update(name="hf", path="someone/captioned-cats")
    card = render_model_card(cfg, {"steps": 5, "generator_params": 1000}, repo_or_path="me/m")
    assert card.data.datasets == ["someone/captioned-cats"] and card.data.license == "other"
    assert "huggingface.co/datasets/someone/captioned-cats" in card.text
    cfg["data"].update(name="hf", path="/data/local_folder")
    assert render_model_card(cfg, {"steps": 5}, repo_or_path="x").data.datasets is None


def test_load_pipeline_trusts_only_our_re_exports(folders, tmp_path):
    root, _ = folders
    pipe = load_pipeline(root / "hub")  # no trust_remote_code needed: the files are verified
    assert type(pipe).__name__ == "DriftingPipeline"
    hacked = tmp_path / "hacked"
    shutil.copytree(root / "hub", hacked)
    shim = hacked / "transformer" / "transformer_drifting.py"
    shim.write_text(shim.read_text() + "import os\n")
    with pytest.raises(ValueError, match="transformer_drifting.py: not a t2i_drift re-export"):
        load_pipeline(hacked)
    (hacked / "extra.py").write_text("print('hi')\n")
    with pytest.raises(ValueError, match="re-export"):
        load_pipeline(hacked)
    with pytest.raises(ValueError, match="no such folder, and not a Hub id"):
        load_pipeline(tmp_path / "missing" / "deeper")


def test_write_hub_layout_never_replaces_what_it_did_not_write(folders, tmp_path):
    root, _ = folders
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a hub layout written by t2i_drift"):
        write_hub_layout(root / "standard", foreign)
    assert (foreign / "precious.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="outside the pipeline folder"):
        write_hub_layout(root / "standard", root)  # would contain (and wipe) the source
    with pytest.raises(ValueError, match="outside the pipeline folder"):
        write_hub_layout(root / "standard", root / "standard" / "hub")
    again = tmp_path / "again"
    write_hub_layout(root / "standard", again)
    write_hub_layout(root / "standard", again)  # its own previous output is replaced
    assert (again / "model_index.json").is_file()


def test_upload_calls_the_hub_api(folders, tmp_path, monkeypatch):
    """Without network: the HfApi calls are recorded instead of sent."""
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw["private"]))

        def upload_folder(self, repo_id, folder_path, **kw):
            calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path))))

    monkeypatch.setattr("t2i_drift.hub.HfApi", FakeApi)
    root, _ = folders
    push_to_hub(root / "standard", "me/repo", staging_dir=tmp_path / "up", private=True, token="t")
    assert calls[0] == ("init", "t") and calls[1] == ("create_repo", "me/repo", True)
    assert calls[2][0] == "upload_folder" and "pipeline_drifting.py" in calls[2][2]


def test_push_script_dry_run_and_errors(folders, tmp_path):
    root, _ = folders
    script = str(ROOT / "scripts" / "push_to_hub.py")
    ok = subprocess.run(
        [
            sys.executable,
            script,
            "--pipeline",
            str(root / "standard"),
            "--repo-id",
            "a/b",
            "--dry-run",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "would upload" in ok.stdout and "transformer/transformer_drifting.py" in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            script,
            "--pipeline",
            str(tmp_path / "nope"),
            "--repo-id",
            "a/b",
            "--dry-run",
            str(tmp_path / "t"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "nope" in bad.stderr and "model_index.json" in bad.stderr


def test_export_samples_where_the_text_encoder_runs(tmp_path, monkeypatch):
    """Training hands the export an EMA copy built on the CPU while the text encoder (and VAE)
    stay on the GPU: the export moves the pipeline to the text encoder's device before it samples
    the grid (on a GPU the first layer otherwise mixes devices). No GPU here: the move is
    recorded, in order with the sampling."""
    from t2i_drift.training import export

    pipe = tiny_pipeline()
    cfg = Config()
    cfg.data.resolution, cfg.text.max_length, cfg.eval.samples_per_grid_prompt = 16, 16, 1
    conditioner = TextConditioner([TextEncoderSlot(pipe.text_encoder, pipe.tokenizer, 16)])
    calls = []
    real_to, real_sample = type(pipe).to, export.sample_images
    monkeypatch.setattr(
        type(pipe), "to", lambda self, *a, **k: calls.append(("to", *a)) or real_to(self, *a, **k)
    )
    monkeypatch.setattr(export, "sample_images", lambda *a: calls.append(("sample",)) or real_sample(*a))
    export_pipeline(cfg, pipe.transformer, conditioner, tmp_path / "out", steps=1)
    assert calls == [("to", conditioner.device), ("sample",)]
