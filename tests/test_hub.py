"""Hub layout and upload: both diffusers entry points load our classes in a fresh process and give
the same images; a dry run stages exactly the upload; the card carries the Hub metadata."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_python, tiny_pipeline
from huggingface_hub import ModelCard

from t2i_drift.hub import push_to_hub, render_model_card, write_hub_layout
from t2i_drift.training.config import Config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    pipe = tiny_pipeline()
    pipe.save_pretrained(root / "standard")
    card = render_model_card(
        Config().to_dict(),
        generator_params=1,
        steps=1,
        repo_or_path=str(root / "standard"),
        sample_grid="x.png",
    )
    card.save(root / "standard" / "README.md")
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
    assert card.data.license == "cc-by-sa-4.0" and "openmoji" in card.data.datasets
    assert card.data.text_encoder == "sentence-transformers/all-MiniLM-L6-v2"
    assert "trust_remote_code=True" in card.text and "![samples](x.png)" in card.text


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
