"""The regression and flow-matching baselines: one config key picks the objective, each trains
from the same recipe and exports a pipeline that loads both ways and samples as documented."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import run_python

from t2i_drift import DriftingPipeline, FlowMatchingPipeline
from t2i_drift.hub import write_hub_layout
from t2i_drift.pipelines import load_pipeline
from t2i_drift.text.encoders import TextEmbeddings
from t2i_drift.training.config import ConfigError, load_config
from t2i_drift.training.objectives.flow_matching import sample_noise_levels
from t2i_drift.training.runs import train_t2i

RECIPE = Path(__file__).parent.parent / "recipes" / "tiny_test.yaml"


def _train(out: Path, *overrides: str) -> Path:
    cfg = load_config(
        RECIPE, [f"train.output_dir={out}", "train.max_steps=2", "features.effnet=null", *overrides]
    )
    return train_t2i(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("objectives")
    return {
        "regression": _train(root / "regression", "objective.name=regression"),
        "flow_matching": _train(
            root / "flow_matching", "objective.name=flow_matching", "objective.caption_dropout=0.5"
        ),
    }


@pytest.mark.parametrize("name", ["regression", "flow_matching"])
def test_each_objective_trains_from_the_same_recipe(runs, name):
    run = runs[name].parent
    lines = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all(x["loss"] > 0 for x in lines)
    assert "config.yaml" in {p.name for p in run.iterdir()}
    assert f"name: {name}" in (run / "config.yaml").read_text()
    expected = FlowMatchingPipeline if name == "flow_matching" else DriftingPipeline
    assert type(load_pipeline(runs[name])) is expected


def test_feature_regression_loss_is_per_key_normalized_and_weighted():
    from t2i_drift.training.objectives.regression import feature_regression_loss

    torch.manual_seed(0)
    real = {"a/loc": torch.randn(4, 9, 3), "b/mean": torch.randn(4, 1, 5)}
    gen = {k: v + 0.1 * torch.randn_like(v) for k, v in real.items()}
    ones = {"a/loc": 1.0, "b/mean": 1.0}
    assert feature_regression_loss(real, real, ones) == 0
    base = feature_regression_loss(gen, real, ones)
    # A key measured in 100x larger units weighs the same: each key is divided by its variance.
    scaled = feature_regression_loss(
        {**gen, "b/mean": 100 * gen["b/mean"]}, {**real, "b/mean": 100 * real["b/mean"]}, ones
    )
    torch.testing.assert_close(scaled, base, rtol=1e-4, atol=0)
    only_a = feature_regression_loss(gen, real, {"a/loc": 1.0, "b/mean": 0.0})
    assert 0 < only_a < base


def test_log_mse_regression_gives_every_key_the_same_pull_whatever_its_units():
    """log_mse: a key's gradient is its plain gradient divided by its current error, so scaling a
    key's units changes neither its gradient's direction nor its share of the total."""
    from t2i_drift.training.objectives.regression import feature_regression_loss, squared_error

    torch.manual_seed(0)
    real = {"a/loc": torch.randn(4, 9, 3), "b/mean": torch.randn(4, 1, 5)}
    ones = {"a/loc": 1.0, "b/mean": 1.0}

    def grads(scale_b: float) -> list[torch.Tensor]:
        gen = {k: (v + 0.1 * torch.randn_like(v)).requires_grad_() for k, v in real.items()}
        scaled = {**gen, "b/mean": scale_b * gen["b/mean"]}
        target = {**real, "b/mean": scale_b * real["b/mean"]}
        loss = feature_regression_loss(scaled, target, ones, log=True)
        return torch.autograd.grad(loss, [gen["a/loc"], gen["b/mean"]])

    torch.manual_seed(1)
    unit = grads(1.0)
    torch.manual_seed(1)
    big = grads(100.0)
    for g1, g100 in zip(unit, big, strict=True):
        torch.testing.assert_close(g100, g1, rtol=1e-4, atol=1e-6)
    gen = (real["a/loc"] + 0.1 * torch.randn_like(real["a/loc"])).requires_grad_()
    (g_log,) = torch.autograd.grad(squared_error(gen, real["a/loc"], log=True), gen)
    (g_mse,) = torch.autograd.grad(squared_error(gen, real["a/loc"], log=False), gen)
    torch.testing.assert_close(g_log, g_mse / squared_error(gen, real["a/loc"], log=False).detach())


def test_regression_in_the_feature_space_trains_and_is_a_regression_only_option(tmp_path, runs):
    pipeline = _train(tmp_path / "run", "objective.name=regression", "objective.regression_space=features")
    lines = [
        json.loads(line) for line in (pipeline.parent / "logs" / "metrics.jsonl").read_text().splitlines()
    ]
    plain = runs["regression"].parent / "logs" / "metrics.jsonl"
    first_plain = json.loads(plain.read_text().splitlines()[0])["loss"]
    assert lines[0]["loss"] > 0 and lines[0]["loss"] != pytest.approx(first_plain)  # another loss
    assert type(load_pipeline(pipeline)) is DriftingPipeline
    with pytest.raises(ConfigError, match="objective.regression_space"):
        load_config(RECIPE, ["objective.regression_space=features"])  # drifting
    with pytest.raises(ConfigError, match="objective.regression_loss"):
        load_config(RECIPE, ["objective.regression_loss=log_mse"])  # drifting


def test_log_mse_regression_trains_on_the_log_of_the_plain_error(tmp_path, runs):
    """Same seed, same first batch: the first logged loss is the log of plain regression's."""
    pipeline = _train(tmp_path / "run", "objective.name=regression", "objective.regression_loss=log_mse")
    first = json.loads((pipeline.parent / "logs" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    plain = runs["regression"].parent / "logs" / "metrics.jsonl"
    first_plain = json.loads(plain.read_text().splitlines()[0])["loss"]
    assert first == pytest.approx(math.log(first_plain), rel=1e-4)
    assert "regression_loss: log_mse" in (pipeline.parent / "config.yaml").read_text()


def test_regression_exports_a_one_step_pipeline_without_guidance(runs):
    pipe = load_pipeline(runs["regression"])
    assert pipe.config.guidance_scale_range == [1.0, 1.0]
    images = pipe(
        "teapot", num_images_per_prompt=2, output_type="np", generator=torch.Generator().manual_seed(0)
    )
    assert images.images.shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="guidance_scale=2.0 is outside the trained range"):
        pipe("teapot", guidance_scale=2.0)


def test_flow_matching_euler_steps_follow_the_learned_velocity(runs):
    """One Euler step from sigma = 1 to 0 is x_0 = eps - v(eps, 1); more steps give other images."""
    pipe = load_pipeline(runs["flow_matching"])
    assert pipe.config.classifier_free_guidance  # trained with dropped captions
    torch.manual_seed(1)
    noise = torch.randn(1, 3, 16, 16)
    one = pipe("teapot", num_inference_steps=1, latents=noise, output_type="latent").images
    emb = TextEmbeddings(*pipe.encode_prompt("teapot"))
    style = torch.zeros(1, pipe.transformer.config.num_style_codebooks, dtype=torch.long)
    with torch.no_grad():
        v = pipe.velocity(noise, 1.0, emb, style)
    torch.testing.assert_close(one, noise - v)
    four = pipe("teapot", num_inference_steps=4, latents=noise, output_type="latent").images
    assert not torch.allclose(one, four)
    steps = []
    pipe(
        "teapot",
        num_inference_steps=4,
        latents=noise,
        callback_on_step_end=lambda p, i, t, kw: steps.append(i) or {},
    )
    assert steps == [0, 1, 2, 3] and pipe.num_timesteps == 4
    guided = pipe(
        "teapot", num_inference_steps=4, latents=noise, guidance_scale=3.0, output_type="latent"
    ).images
    assert not torch.allclose(four, guided)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe("teapot", num_inference_steps=0)


def test_flow_matching_without_dropped_captions_refuses_guidance(tmp_path):
    pipe = load_pipeline(_train(tmp_path / "run", "objective.name=flow_matching", "train.max_steps=1"))
    assert not pipe.config.classifier_free_guidance
    with pytest.raises(ValueError, match="needs a model trained with dropped captions"):
        pipe("teapot", guidance_scale=2.0)


def test_flow_matching_export_loads_with_diffusion_pipeline_in_a_fresh_process(runs, tmp_path):
    hub = tmp_path / "hub"
    write_hub_layout(runs["flow_matching"], hub)
    assert json.loads((hub / "model_index.json").read_text())["_class_name"] == [
        "pipeline_flow_matching",
        "FlowMatchingPipeline",
    ]
    out = run_python(f"""
        import torch
        import t2i_drift
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(hub)!r}, trust_remote_code=True)
        g = lambda: torch.Generator().manual_seed(0)
        a = pipe("teapot", num_inference_steps=1, generator=g(), output_type="pt").images
        b = pipe("teapot", num_inference_steps=4, generator=g(), output_type="pt").images
        print(type(pipe).__name__, tuple(a.shape), bool((a - b).abs().max() > 0))
    """)
    assert "FlowMatchingPipeline (1, 3, 16, 16) True" in out
    card = (runs["flow_matching"] / "README.md").read_text()
    assert "FlowMatchingPipeline.from_pretrained" in card and "flow-matching baseline" in card


def test_noise_levels_and_objective_config():
    g = torch.Generator().manual_seed(0)
    uniform = sample_noise_levels(20000, "uniform", 0.0, 1.0, g, torch.device("cpu"))
    logit = sample_noise_levels(20000, "logit_normal", 0.0, 1.0, g, torch.device("cpu"))
    assert 0 < uniform.min() and uniform.max() < 1 and abs(uniform.mean() - 0.5) < 0.01
    assert abs(logit.median() - 0.5) < 0.01 and logit.std() < uniform.std()  # mass in the middle
    shifted = sample_noise_levels(20000, "logit_normal", 1.0, 1.0, g, torch.device("cpu"))
    assert shifted.median() > 0.7  # sigmoid(1) = 0.73
    with pytest.raises(ConfigError, match="objective.name"):
        load_config(RECIPE, ["objective.name=diffusion"])
    with pytest.raises(ConfigError, match="objective.caption_dropout"):
        load_config(RECIPE, ["objective.caption_dropout=1.0"])


@pytest.mark.parametrize("name", ["drifting", "regression", "flow_matching"])
def test_learning_rate_warm_up_starts_where_configured(name):
    """The LambdaLR factor of every objective: from lr / warmup_steps by default (never 0, so the
    first step moves the weights), from optim.warmup_start_lr when set, then constant."""
    from t2i_drift.training.objectives import TEXT_TO_IMAGE_OBJECTIVES

    def make_objective(cfg):
        return TEXT_TO_IMAGE_OBJECTIVES[cfg.objective.name](cfg)

    default = make_objective(load_config(None, [f"objective.name={name}", "optim.warmup_steps=4"]))
    assert [default.lr_factor(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    official = make_objective(
        load_config(
            None,
            [
                f"objective.name={name}",
                "optim.learning_rate=2.0e-4",
                "optim.warmup_start_lr=1.0e-6",
                "optim.warmup_steps=10",
            ],
        )
    )
    lrs = [2e-4 * official.lr_factor(s) for s in range(12)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[10:] == pytest.approx([2e-4, 2e-4])
    assert lrs[5] == pytest.approx(1e-6 + 0.5 * (2e-4 - 1e-6))
    with pytest.raises(ConfigError, match="optim.warmup_start_lr"):
        load_config(None, ["optim.warmup_start_lr=0.5"])  # above the learning rate
