"""DriftingTransformer2DModel: shapes, adaLN-zero init, conditioning, checkpointing, save/load."""

import pytest
import torch

from t2i_drift import DriftingTransformer2DModel


def _model(**kw):
    torch.manual_seed(0)
    return DriftingTransformer2DModel.from_preset(
        "tiny",
        sample_size=16,
        patch_size=4,
        text_embed_dim=12,
        pooled_embed_dim=10,
        num_style_codebooks=4,
        **kw,
    )


def _inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(n, 3, 16, 16, generator=g),
        encoder_hidden_states=torch.randn(n, 5, 12, generator=g),
        encoder_attention_mask=torch.tensor([[1, 1, 1, 0, 0]] * n),
        pooled_projections=torch.randn(n, 10, generator=g),
        guidance=torch.tensor([1.0, 2.0, 3.5][:n]),
        style_indices=torch.randint(0, 64, (n, 4), generator=g),
    )


def _perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_output_shape_and_zero_init(text_attention):
    model = _model(text_attention=text_attention)
    out = model(**_inputs()).sample
    assert out.shape == (3, 3, 16, 16)
    assert torch.count_nonzero(out) == 0  # adaLN-zero: the final projection starts at zero


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_every_condition_changes_the_output(text_attention):
    model = _perturb(_model(text_attention=text_attention)).eval()
    base = _inputs()
    ref = model(**base).sample
    for key, new in [
        ("guidance", torch.tensor([1.5, 2.5, 3.0])),
        ("pooled_projections", base["pooled_projections"] + 1),
        ("encoder_hidden_states", base["encoder_hidden_states"] + 1),
        ("style_indices", (base["style_indices"] + 1) % 64),
        ("hidden_states", base["hidden_states"] + 1),
    ]:
        assert not torch.allclose(model(**{**base, key: new}).sample, ref), key


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_masked_tokens_are_ignored(text_attention):
    model = _perturb(_model(text_attention=text_attention)).eval()
    base = _inputs()
    changed = base["encoder_hidden_states"].clone()
    changed[:, 3:] = 99.0  # masked positions
    torch.testing.assert_close(
        model(**{**base, "encoder_hidden_states": changed}).sample, model(**base).sample
    )


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_gradient_checkpointing_gives_identical_gradients(text_attention):
    model = _perturb(_model(text_attention=text_attention))
    inputs = _inputs()
    model(**inputs).sample.square().mean().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(**inputs).sample.square().mean().backward()
    for a, p in zip(ref, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a)


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_save_load_roundtrip_is_safetensors(text_attention, tmp_path):
    model = _perturb(_model(text_attention=text_attention)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "config.json").is_file()
    loaded = DriftingTransformer2DModel.from_pretrained(tmp_path).eval()
    assert loaded.config.text_attention == text_attention
    inputs = _inputs()
    torch.testing.assert_close(loaded(**inputs).sample, model(**inputs).sample, rtol=0, atol=0)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="divisible"):
        DriftingTransformer2DModel(sample_size=10, patch_size=4)
    with pytest.raises(ValueError, match="preset"):
        DriftingTransformer2DModel.from_preset("XXL")
    with pytest.raises(ValueError, match="text_attention"):
        DriftingTransformer2DModel(text_attention="both")
    model = _model()
    with pytest.raises(ValueError, match="divisible by patch_size"):
        model(**{**_inputs(), "hidden_states": torch.randn(3, 3, 18, 18)})


# The official release's generator details, each a config option (docs/method.md section 6).
OFFICIAL = dict(
    guidance_embed_gain=0.02,
    conditioned_registers=True,
    absolute_pos_embed=True,
    norm_affine=True,
    style_init_std=0.02,
)


def test_official_options_keep_adaln_zero_and_every_condition(tmp_path):
    model = _model(**OFFICIAL)
    assert torch.equal(model(**_inputs()).sample, torch.zeros(3, 3, 16, 16))  # still identity at init
    model = _perturb(model).eval()
    base = model(**_inputs()).sample
    for key, change in (("guidance", torch.tensor([4.0, 4.0, 4.0])), ("pooled_projections", None)):
        inputs = _inputs()
        inputs[key] = change if change is not None else inputs[key] + 1.0
        assert not torch.allclose(model(**inputs).sample, base), key
    model.save_pretrained(tmp_path)
    loaded = DriftingTransformer2DModel.from_pretrained(tmp_path).eval()
    assert {k: loaded.config[k] for k in OFFICIAL} == OFFICIAL
    torch.testing.assert_close(loaded(**_inputs()).sample, base)


def test_official_options_do_what_they_say():
    default, official = _model(), _model(**OFFICIAL)
    guidance = torch.tensor([1.0, 4.0])
    pooled, style = torch.zeros(2, 10), torch.zeros(2, 4, dtype=torch.long)

    # alpha's share of the adaLN vector at init: ~0.02 RMS with the gain, far larger without it
    def alpha_rms(m: DriftingTransformer2DModel) -> torch.Tensor:
        rest = m.pooled_embedder(pooled) + m.style_embedding(style + torch.arange(4) * 64).sum(1)
        return (m._conditioning(pooled, guidance, style) - rest).pow(2).mean().sqrt()

    assert 0.015 < alpha_rms(official) < 0.025 and alpha_rms(default) > 10 * alpha_rms(official)
    # style embeddings at std 0.02 each (default: their sum of 4 has std 0.02)
    assert abs(official.style_embedding.weight.std() - 0.02) < 0.002
    assert abs(default.style_embedding.weight.std() - 0.01) < 0.001
    # learnable norm scales, the conditioning map of the registers, the position embedding's init
    assert official.blocks[0].norm1.weight is not None and default.blocks[0].norm1.weight is None
    assert official.register_proj is not None and default.register_proj is None
    from t2i_drift.models.transformer_blocks import sincos_2d

    torch.testing.assert_close(official.pos_embed[0], sincos_2d(4, 4, 64))
    with pytest.raises(ValueError, match="absolute_pos_embed"):
        official(**{**_inputs(2), "hidden_states": torch.randn(2, 3, 32, 32)})
    # the registers carry the conditioning: their projection gets a gradient through the output
    model = _perturb(_model(**OFFICIAL))
    model(**_inputs()).sample.square().mean().backward()
    assert model.register_proj.weight.grad.abs().sum() > 0
