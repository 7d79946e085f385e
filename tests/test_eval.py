"""Evaluation: retrieval, shapes accuracy, diversity, timed generation, the suites and scripts/evaluate.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_pipeline

from t2i_drift.data.shapes import Scene, ShapeObject
from t2i_drift.eval import paired_retrieval_accuracy
from t2i_drift.eval.diversity import diversity, mean_pairwise_distance, pixel_rms_diversity
from t2i_drift.eval.generation import (
    default_steps,
    generate_images,
    is_multi_step,
    steps_kwargs,
    transformer_passes,
)
from t2i_drift.eval.shapes import (
    attribute_accuracy,
    group_accuracy,
    render_from_groups,
    render_scenes,
    split_caption_groups,
    split_scenes,
    spread_indices,
)
from t2i_drift.eval.suites import EvalSettings, OpenMojiSuite, ShapesSuite, evaluate_pipeline

SCRIPTS = Path(__file__).parent.parent / "scripts"


def load_script(name: str):
    """A script under scripts/ as a module (its main() runs in this process: no second import cost)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_flow_matching_pipeline(sample_size: int = 16):
    """Real MiniLM + a tiny perturbed transformer as a FlowMatchingPipeline (guidance allowed)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from t2i_drift import DriftingTransformer2DModel
    from t2i_drift.pipelines import FlowMatchingPipeline
    from t2i_drift.text import load_text_encoder

    tokenizer, text_encoder = load_text_encoder("minilm")
    torch.manual_seed(0)
    transformer = DriftingTransformer2DModel.from_preset(
        "tiny", sample_size=sample_size, patch_size=4, text_embed_dim=384, pooled_embed_dim=384
    )
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.02 * torch.randn_like(p))
    pipe = FlowMatchingPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        max_sequence_length=16,
        classifier_free_guidance=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class StubEmbedder:
    """Stands in for EffNetLite0Embedder where its figures do not matter: 4x4 mean-pooled pixels."""

    def to(self, device):
        return self

    def embed(self, images: torch.Tensor, batch_size: int = 100, desc: str = "") -> np.ndarray:
        return F.adaptive_avg_pool2d(images.float(), 4).flatten(1).double().numpy()  # [N, 48]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory) -> dict[str, Path]:
    """Exported tiny pipelines: a one-step DriftingPipeline and a FlowMatchingPipeline, 16 px."""
    root = tmp_path_factory.mktemp("eval_pipes")
    tiny_pipeline(16).save_pretrained(root / "drifting")
    tiny_flow_matching_pipeline(16).save_pretrained(root / "flow_matching")
    return {"drifting": root / "drifting", "flow_matching": root / "flow_matching"}


# ----------------------------------------------------------------------------------------------
#                                         Retrieval
# ----------------------------------------------------------------------------------------------
def test_paired_retrieval_accuracy():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 16))
    assert paired_retrieval_accuracy(real + 0.01 * rng.normal(size=real.shape), real) == {1: 1.0, 5: 1.0}
    shuffled = paired_retrieval_accuracy(real[rng.permutation(200)], real, ks=(1, 20))
    assert shuffled[1] < 0.05 and shuffled[20] < 0.25  # about chance: 1/200 and 20/200
    # one caption whose image is generated as another caption's: top-1 drops by exactly 1/N
    swapped = real.copy()
    swapped[0] = real[1]
    assert paired_retrieval_accuracy(swapped, real)[1] == pytest.approx(199 / 200)
    with pytest.raises(ValueError, match="must both be"):
        paired_retrieval_accuracy(real, real[:10])


# ----------------------------------------------------------------------------------------------
#                                          Shapes
# ----------------------------------------------------------------------------------------------
def test_spread_indices_and_split_scenes():
    assert spread_indices(10, 4) == [0, 3, 6, 9]
    assert spread_indices(5, None) == spread_indices(5, 9) == [0, 1, 2, 3, 4]
    many = spread_indices(3733, 1000)
    assert len(set(many)) == 1000 and many[0] == 0 and many[-1] == 3732
    assert len(split_scenes("train")) == 788 and len(split_scenes("heldout")) == 472
    sample = split_scenes("heldout", 40)
    assert len(sample) == 40 and all(s.held_out for s in sample)
    assert {len(s.objects) for s in sample} == {1, 2}  # spread: one- and two-object scenes
    with pytest.raises(ValueError, match="split"):
        split_scenes("validation")


def test_attribute_accuracy_real_renders_and_shuffled_pairing():
    scenes = split_scenes("train", 30) + split_scenes("heldout", 30)
    images = render_scenes(scenes, 32)
    assert images.shape == (60, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    real = attribute_accuracy(images, scenes)
    assert set(real) == {"count", "colour", "shape", "position", "size", "all_attributes"}
    assert all(v >= 0.97 for v in real.values()), real
    shuffled = attribute_accuracy(images.roll(7, dims=0), scenes)  # each image scored against another scene
    assert shuffled["all_attributes"] < 0.25 and shuffled["colour"] < real["colour"] - 0.3, shuffled
    # uint8 HWC arrays score the same as [-1, 1] tensors
    arrays = [((im.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy() for im in images[:10]]
    assert attribute_accuracy(arrays, scenes[:10]) == attribute_accuracy(images[:10], scenes[:10])
    two = [s for s in scenes if s.relation is not None]
    assert attribute_accuracy(render_scenes(two, 32), two)["size"] is None  # size: one-object only
    with pytest.raises(ValueError, match="images for"):
        attribute_accuracy(images[:3], scenes)


def test_render_scenes_jitters_renders_of_one_caption():
    scene = Scene((ShapeObject("circle", "red", "center", "large"),))
    renders = render_scenes([scene], 32, renders=4)
    assert renders.shape == (4, 3, 32, 32)
    assert pixel_rms_diversity(renders.unsqueeze(0)) > 0  # jittered: not four copies


# ----------------------------------------------------------------------------------------------
#                                         Diversity
# ----------------------------------------------------------------------------------------------
def test_diversity_is_zero_for_identical_images_and_grows_with_noise():
    assert mean_pairwise_distance(torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])) == pytest.approx(5.0)
    torch.manual_seed(0)
    base = torch.rand(4, 1, 3, 8, 8) * 2 - 1  # 4 prompts
    same = base.expand(4, 3, 3, 8, 8)  # 3 identical images per prompt
    out = diversity(same, torch.ones(4, 3, 16))
    assert out["within_prompt"] == {"pixel_rms": 0.0, "effnet_l2": 0.0}
    assert out["between_prompts"]["pixel_rms"] > 0.3  # different prompts: different images
    figures = []
    for sigma in (0.02, 0.1, 0.3):
        noisy = same + sigma * torch.randn(4, 3, 3, 8, 8)
        figures.append(pixel_rms_diversity(noisy))
        # two independent N(0, sigma^2) perturbations differ by sigma * sqrt(2) in RMS
        assert figures[-1] == pytest.approx(sigma * 2**0.5, rel=0.15)
    assert figures == sorted(figures)
    single = diversity(base)  # one image per prompt: no within-prompt figure
    assert single["within_prompt"] is None and single["between_prompts"]["effnet_l2"] is None
    with pytest.raises(ValueError, match="P, S"):
        pixel_rms_diversity(base[0])
    with pytest.raises(ValueError, match="do not match"):
        diversity(same, torch.ones(4, 2, 16))


# ----------------------------------------------------------------------------------------------
#                                         Generation
# ----------------------------------------------------------------------------------------------
def test_generate_images_shapes_seeds_and_latency():
    pipe = tiny_pipeline(16)
    captions = ["teapot", "rocket", "teapot"]
    gen = generate_images(pipe, captions, seed=0, batch_size=2)
    assert gen.images.shape == (3, 3, 16, 16) and gen.images.dtype == torch.float32
    assert gen.images.min() >= -1 and gen.images.max() <= 1 and gen.images.min() < 0  # [-1, 1], not [0, 1]
    assert gen.seconds > 0 and gen.latency_s_per_image == pytest.approx(gen.seconds / 3)
    again = generate_images(pipe, captions, seed=0, batch_size=2, warmup=False)
    torch.testing.assert_close(again.images, gen.images)  # the seed fixes the images
    assert not torch.allclose(gen.images[0], gen.images[2])  # one caption twice: two noises
    other = generate_images(pipe, captions, seed=1, batch_size=2, warmup=False)
    assert not torch.allclose(other.images, gen.images)
    assert not is_multi_step(pipe) and default_steps(pipe) == 1 and steps_kwargs(pipe, 1) == {}
    assert transformer_passes(pipe, 1, 3.0) == 1  # learned guidance: one pass
    with pytest.raises(ValueError, match="one step"):
        steps_kwargs(pipe, 4)
    with pytest.raises(ValueError, match="no captions"):
        generate_images(pipe, [])


def test_multi_step_pipeline_takes_its_steps_and_counts_passes():
    pipe = tiny_flow_matching_pipeline(16)
    assert is_multi_step(pipe) and default_steps(pipe) == 25
    assert steps_kwargs(pipe, 4) == {"num_inference_steps": 4}
    assert transformer_passes(pipe, 4, 1.0) == 4 and transformer_passes(pipe, 4, 3.0) == 8  # CFG: 2 per step
    one = generate_images(pipe, ["teapot"], call_kwargs=steps_kwargs(pipe, 1), warmup=False)
    four = generate_images(pipe, ["teapot"], call_kwargs=steps_kwargs(pipe, 4), warmup=False)
    assert not torch.allclose(one.images, four.images)  # the step count reaches the pipeline
    with pytest.raises(ValueError, match=">= 1"):
        steps_kwargs(pipe, 0)


# ----------------------------------------------------------------------------------------------
#                                          Suites
# ----------------------------------------------------------------------------------------------
def test_shapes_suite_scores_each_nfe_against_the_real_reference():
    settings = EvalSettings(seeds=2, num=4, batch_size=8, diversity_prompts=3)
    suite = ShapesSuite(16, settings, StubEmbedder())
    ref = suite.reference
    assert ref["scenes"] == {"train": 4, "heldout": 4} and ref["diversity_prompts"] == 3
    assert ref["real_renders"]["train"]["all_attributes"] > 0.5
    assert ref["diversity"]["within_prompt"]["pixel_rms"] > 0  # jittered renders of one caption
    result = evaluate_pipeline(tiny_flow_matching_pipeline(16), suite, [1, 2], progress=False)
    assert result["pipeline"] == "FlowMatchingPipeline" and result["multi_step"]
    runs = result["runs"]
    assert [r["nfe"] for r in runs] == [1, 2] and [r["transformer_passes_per_image"] for r in runs] == [1, 2]
    for r in runs:
        assert r["images"] == 2 * 4 * 2 and r["latency_s_per_image"] > 0
        assert r["train"]["all_attributes"] < ref["real_renders"]["train"]["all_attributes"]  # untrained
        assert r["diversity"]["within_prompt"]["pixel_rms"] > 0
        assert r["diversity"]["within_prompt"]["effnet_l2"] is not None
    json.dumps(result)  # JSON-ready


def test_group_accuracy_takes_the_best_matching_scene_and_measures_coverage():
    groups = [g for _, g in split_caption_groups("heldout", ["position"], 12)]
    assert {len(g) for g in groups} == {4, 5}
    per = 6
    repeated = [g for g in groups for _ in range(per)]
    real = group_accuracy(render_from_groups(groups, 32, per, seed=1), repeated)
    assert real["all_attributes"] == 1.0 and 0.4 < real["coverage"] < 1.0  # 6 random draws of 4-5 scenes
    assert real["scenes_per_caption"] == sum(len(g) for g in groups) / len(groups)
    # one layout per caption, always the same: every image right, coverage one scene per caption
    same = group_accuracy(render_scenes([g[0] for g in repeated], 32, seed=2), repeated)
    assert same["all_attributes"] == 1.0
    assert same["coverage"] == pytest.approx(sum(1 / len(g) for g in groups) / len(groups))
    # the caption's mean image (what regression converges to) is right for almost none of them
    images = render_from_groups(groups, 32, 8, seed=3).reshape(len(groups), 8, 3, 32, 32)
    mean = images.mean(1).repeat_interleave(per, 0)
    blurred = group_accuracy(mean, repeated)
    assert blurred["all_attributes"] < 0.25 and blurred["coverage"] < 0.1
    # with nothing omitted, a group is one scene and the accuracies are attribute_accuracy's
    scenes = split_scenes("heldout", 40)
    noisy = render_scenes(scenes, 32, seed=4) + 0.3 * torch.randn(
        40, 3, 32, 32, generator=torch.Generator().manual_seed(0)
    )
    single = group_accuracy(noisy, [g for _, g in split_caption_groups("heldout", [], 40)])
    expected = attribute_accuracy(noisy, scenes)
    assert {k: single[k] for k in expected} == expected and 0 < expected["all_attributes"] < 1
    with pytest.raises(ValueError, match="caption groups"):
        group_accuracy(noisy[:2], [[scenes[0]]])


def test_shapes_suite_with_omitted_attributes_scores_any_allowed_scene():
    settings = EvalSettings(seeds=2, num=3, batch_size=8, diversity_prompts=2, shapes_omit=("position",))
    suite = ShapesSuite(16, settings, StubEmbedder(), splits=["heldout"])
    ref = suite.reference
    assert ref["shapes_omit"] == ["position"] and ref["captions"] == {"heldout": 3}
    assert ref["scenes"]["heldout"] > 3 and ref["real_renders_per_caption"] == 2
    assert ref["real_renders"]["heldout"]["all_attributes"] > 0.5
    # renders of a caption's scenes differ by layout, far more than jitter
    assert ref["diversity"]["within_prompt"]["pixel_rms"] > 0.1
    (run,) = evaluate_pipeline(tiny_pipeline(16), suite, [1], progress=False)["runs"]
    assert run["images"] == 3 * 2 and 0 <= run["heldout"]["coverage"] <= 1
    assert [c for c, _ in suite.groups["heldout"]][0].split()[-1] in ("circle", "square", "triangle")
    with pytest.raises(ValueError, match="shapes_omit"):
        EvalSettings(shapes_omit=("colour",))


def test_openmoji_suite_reports_fd_floor_retrieval_and_diversity():
    settings = EvalSettings(seeds=2, num=6, num_val=4, batch_size=8, diversity_prompts=3)
    suite = OpenMojiSuite(16, settings, StubEmbedder())
    ref = suite.reference
    assert ref["num_train"] == 6 and ref["num_val"] == 4 and ref["fd_real_train_val"] > 0
    assert ref["diversity"]["within_prompt"] is None  # one real image per caption
    assert ref["diversity"]["between_prompts"]["pixel_rms"] > 0
    result = evaluate_pipeline(tiny_pipeline(16), suite, [1], progress=False)
    (run,) = result["runs"]
    assert run["images"] == 6 + 4 + 3 * 2 and run["fd_gen_train"] > 0 and run["fd_gen_val"] > 0
    assert 0 <= run["retrieval_top1"] <= run["retrieval_top5"] <= 1
    assert run["diversity"]["within_prompt"]["pixel_rms"] > 0
    with pytest.raises(ValueError, match="OpenMoji training captions"):
        OpenMojiSuite(16, EvalSettings(num=10**6), StubEmbedder())


# ----------------------------------------------------------------------------------------------
#                                    scripts/evaluate.py
# ----------------------------------------------------------------------------------------------
def test_evaluate_script_on_shapes_and_openmoji(pipes, tmp_path):
    """Real EfficientNet-Lite0; tiny subsets. Both --data choices, a flow-matching pipeline at two NFE."""
    evaluate = load_script("evaluate")
    common = ["--seeds", "2", "--diversity-prompts", "2", "--batch-size", "8"]
    out = tmp_path / "shapes.json"
    args = ["--model", str(pipes["flow_matching"]), "--data", "shapes", "--num", "3", "--nfe", "2", "1"]
    assert evaluate.main([*args, *common, "--out", str(out)]) == 0
    shapes = json.loads(out.read_text())
    assert shapes["data"] == "shapes" and shapes["pipeline"] == "FlowMatchingPipeline"
    assert [r["nfe"] for r in shapes["runs"]] == [1, 2]
    assert shapes["reference"]["scenes"] == {"train": 3, "heldout": 3}
    within = shapes["runs"][0]["diversity"]["within_prompt"]
    assert within["pixel_rms"] > 0 and within["effnet_l2"] > 0
    assert shapes["reference"]["diversity"]["within_prompt"]["effnet_l2"] > 0

    out = tmp_path / "openmoji.json"
    args = ["--model", str(pipes["drifting"]), "--num", "4", "--num-val", "3", "--out", str(out)]
    assert evaluate.main([*args, *common]) == 0
    emoji = json.loads(out.read_text())
    (run,) = emoji["runs"]
    assert emoji["data"] == "openmoji" and run["nfe"] == 1 and run["transformer_passes_per_image"] == 1
    assert emoji["reference"]["num_train"] == 4 and emoji["reference"]["num_val"] == 3
    assert np.isfinite(run["fd_gen_train"]) and np.isfinite(emoji["reference"]["fd_real_train_val"])
    assert run["latency_s_per_image"] > 0 and "not FID" in emoji["metrics"]["fd"]


def test_evaluate_script_refuses_shapes_options_on_openmoji(pipes, capsys):
    with pytest.raises(SystemExit) as err:
        load_script("evaluate").main(["--model", str(pipes["drifting"]), "--shapes-omit", "position"])
    assert err.value.code == 2 and "--shapes-omit" in capsys.readouterr().err.splitlines()[-1]


def test_evaluate_script_rejects_steps_for_a_one_step_pipeline(pipes, capsys):
    evaluate = load_script("evaluate")
    with pytest.raises(SystemExit) as err:
        evaluate.main(["--model", str(pipes["drifting"]), "--nfe", "1", "4"])
    assert err.value.code == 2 and "argument --nfe" in capsys.readouterr().err.splitlines()[-1]
    with pytest.raises(SystemExit):
        evaluate.main(["--model", str(pipes["drifting"]), "--num", "1"])
    assert "argument --num" in capsys.readouterr().err.splitlines()[-1]
    with pytest.raises(SystemExit):
        evaluate.main(["--model", str(pipes["drifting"].parent / "missing")])
    assert "argument --model" in capsys.readouterr().err.splitlines()[-1]
