"""DriftingPipeline against diffusers' pipeline conventions, tested the way diffusers' own pipeline
tests do: encode_prompt in isolation, from_pipe, optional components, callbacks, attention
processors and backends, the progress bar, batch consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_pipeline, tiny_vae

from t2i_drift import DriftingPipeline, DriftingTransformer2DModel
from t2i_drift.models.transformer_blocks import DriftingAttnProcessor


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def _np(pipe, **kw):
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(output_type="np", **kw).images


def _latent_pipe(base) -> DriftingPipeline:
    torch.manual_seed(0)
    transformer = DriftingTransformer2DModel.from_preset(
        "tiny", sample_size=8, patch_size=2, in_channels=4, text_embed_dim=384, pooled_embed_dim=384
    )
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.02 * torch.randn_like(p))
    pipe = DriftingPipeline(
        transformer=transformer,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        vae=tiny_vae(0.5, 0.1),
        max_sequence_length=16,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------------------------
#                                         encode_prompt
# ----------------------------------------------------------------------------------------------


def test_encode_prompt_returns_the_diffusers_tuple(pipe):
    out = pipe.encode_prompt(["teapot", "rocket"], num_images_per_prompt=3)
    assert isinstance(out, tuple) and len(out) == 3
    embeds, mask, pooled = out
    assert embeds.shape == (6, 16, 384) and mask.shape == (6, 16) and pooled.shape == (6, 384)
    torch.testing.assert_close(embeds[0], embeds[2])  # rows b*n .. b*n+n-1 are prompt b
    assert not torch.allclose(pooled[2], pooled[3])
    # Embeddings passed back are only repeated, never re-encoded.
    again = pipe.encode_prompt(
        None, 2, prompt_embeds=embeds[:1], prompt_attention_mask=mask[:1], pooled_prompt_embeds=pooled[:1]
    )
    torch.testing.assert_close(again[0], embeds[:2])


def test_max_sequence_length_truncates_the_prompt(pipe):
    prompt = "a very long prompt about a red teapot on a wooden table next to a window at dawn"
    short = pipe.encode_prompt(prompt, max_sequence_length=4)
    assert short[0].shape[1] == 4 and short[1].shape == (1, 4)
    assert not np.allclose(_np(pipe, prompt=prompt, max_sequence_length=4), _np(pipe, prompt=prompt))
    with pytest.raises(ValueError, match="model_max_length"):
        pipe(prompt, max_sequence_length=100_000)
    with pytest.raises(ValueError, match="max_sequence_length must be a positive int"):
        pipe(prompt, max_sequence_length=0)


# ----------------------------------------------------------------------------------------------
#                                  components: from_pipe, optional
# ----------------------------------------------------------------------------------------------


def test_from_pipe_keeps_every_component_including_the_vae(pipe):
    latent = _latent_pipe(pipe)
    derived = DriftingPipeline.from_pipe(latent)
    assert derived.vae is latent.vae and derived.transformer is latent.transformer
    assert derived.config.max_sequence_length == 16
    derived.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_np(derived, prompt="teapot"), _np(latent, prompt="teapot"))
    assert _np(derived, prompt="teapot").shape == (1, 16, 16, 3)  # decoded pixels, not latents


def test_text_encoders_are_optional_when_embeddings_are_given(pipe, tmp_path):
    embeds, mask, pooled = pipe.encode_prompt(["teapot", "rocket"])
    expected = _np(pipe, prompt=["teapot", "rocket"])
    bare = DriftingPipeline(
        transformer=pipe.transformer, text_encoder=None, tokenizer=None, max_sequence_length=16
    )
    bare.set_progress_bar_config(disable=True)
    kwargs = dict(prompt_embeds=embeds, prompt_attention_mask=mask, pooled_prompt_embeds=pooled)
    np.testing.assert_array_equal(_np(bare, **kwargs), expected)
    with pytest.raises(ValueError, match="uses text_encoder .* loaded as None"):
        bare("teapot")
    bare.save_pretrained(tmp_path)
    reloaded = DriftingPipeline.from_pretrained(tmp_path)
    assert reloaded.text_encoder is None and reloaded.tokenizer is None
    reloaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_np(reloaded, **kwargs), expected)
    with pytest.raises(ValueError, match="must be given together"):
        DriftingPipeline(transformer=pipe.transformer, text_encoder=pipe.text_encoder, tokenizer=None)


# ----------------------------------------------------------------------------------------------
#                                     call arguments
# ----------------------------------------------------------------------------------------------


def test_num_inference_steps_accepts_one_only(pipe):
    np.testing.assert_array_equal(
        _np(pipe, prompt="teapot", num_inference_steps=1), _np(pipe, prompt="teapot")
    )
    with pytest.raises(ValueError, match="num_inference_steps=4: .* only valid value is 1"):
        pipe("teapot", num_inference_steps=4)


def test_callback_on_step_end_reads_and_replaces_tensors(pipe):
    seen = {}

    def callback(p, step, timestep, kwargs):
        seen.update(step=step, keys=sorted(kwargs), pipe=p)
        return {"latents": torch.zeros_like(kwargs["latents"])}

    images = _np(
        pipe,
        prompt="teapot",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
    )
    assert seen == {"step": 0, "keys": ["latents", "prompt_embeds"], "pipe": pipe}
    np.testing.assert_allclose(images, 0.5, atol=1e-6)  # zeros in [-1, 1] -> mid grey
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe("teapot", callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["noise_pred"])


def test_pipeline_callback_objects_are_accepted(pipe):
    from diffusers.callbacks import PipelineCallback

    class Halve(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            return {"latents": callback_kwargs["latents"] * 0.5}

    halved = pipe(
        "teapot",
        output_type="latent",
        callback_on_step_end=Halve(),
        generator=torch.Generator().manual_seed(0),
    )
    full = pipe("teapot", output_type="latent", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(halved.images, full.images * 0.5)


def test_attention_goes_through_processors_and_the_dispatcher(pipe):
    """attention_kwargs reach every processor; set_attention_backend reaches diffusers'
    dispatcher (it was a silent no-op when the blocks called SDPA directly)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    class Recording(DriftingAttnProcessor):
        calls: list = []

        def __call__(self, attn, *args, tag=None, **kwargs):
            Recording.calls.append(tag)
            return super().__call__(attn, *args, **kwargs)

    transformer = pipe.transformer
    expected = _np(pipe, prompt="teapot")
    n_attn = len(transformer.attn_processors)
    assert n_attn >= 2
    transformer.set_attn_processor(Recording())
    try:
        got = _np(pipe, prompt="teapot", attention_kwargs={"tag": "x", "scale": 1.0})  # scale: the LoRA scale
        assert Recording.calls == ["x"] * n_attn
        np.testing.assert_allclose(got, expected, atol=1e-6)
    finally:
        transformer.set_attn_processor(DriftingAttnProcessor())

    name = AttentionBackendName._NATIVE_MATH
    original = _AttentionBackendRegistry._backends[name]
    used = []

    def counting(*args, **kwargs):
        used.append(1)
        return original(*args, **kwargs)

    _AttentionBackendRegistry._backends[name] = counting
    try:
        transformer.set_attention_backend("_native_math")
        got = _np(pipe, prompt="teapot")
    finally:
        _AttentionBackendRegistry._backends[name] = original
        transformer.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)
    assert len(used) == n_attn
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_progress_bar_and_example_docstring(pipe, capsys):
    pipe.set_progress_bar_config(disable=False)
    try:
        pipe("teapot", output_type="latent")
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert "1/1" in capsys.readouterr().err
    doc = DriftingPipeline.__call__.__doc__
    assert "Examples:" in doc and ">>> image = pipe(" in doc


def test_batch_matches_single_prompt_calls_with_per_image_generators(pipe):
    """diffusers' batch consistency: a batch with one generator per image gives each image what
    a call with that generator alone gives."""
    batch = _np(
        pipe, prompt=["teapot", "rocket"], generator=[torch.Generator().manual_seed(s) for s in (3, 4)]
    )
    one = _np(pipe, prompt="rocket", generator=[torch.Generator().manual_seed(4)])
    np.testing.assert_allclose(batch[1:], one, atol=1e-5)


def test_low_precision_loading_matches_fp32(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    low = DriftingPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    low.set_progress_bar_config(disable=True)
    assert low.transformer.dtype == torch.bfloat16 and low.text_encoder.dtype == torch.bfloat16
    a, b = _np(low, prompt="teapot"), _np(pipe, prompt="teapot")
    assert a.dtype == np.float32 and np.abs(a - b).max() < 0.05


def test_any_call_arguments_work_or_name_the_argument(pipe):
    """Property (hypothesis): every combination of call arguments either makes images or raises a
    ValueError / TypeError whose message names one of the arguments given."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    anything = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-64, 64),
        st.floats(-8, 8),
        st.text(max_size=5),
        st.lists(st.integers(0, 3), max_size=2),
    )
    arguments = {
        "prompt": st.one_of(
            st.text(max_size=8),
            st.lists(st.one_of(st.text(max_size=6), st.none(), st.integers()), max_size=3),
            anything,
        ),
        "height": st.one_of(st.sampled_from([16, 32, 8, 18, 0, -16]), anything),
        "width": st.one_of(st.sampled_from([16, 32, 12]), anything),
        "num_images_per_prompt": st.one_of(st.integers(-1, 3), anything),
        "guidance_scale": st.one_of(st.floats(0, 6), st.just(float("nan")), anything),
        "num_inference_steps": st.one_of(st.just(1), anything),
        "output_type": st.one_of(st.sampled_from(["pil", "np", "pt", "latent"]), anything),
        "max_sequence_length": st.one_of(st.integers(-2, 40), anything),
        "generator": st.one_of(st.just(torch.Generator().manual_seed(0)), anything),
    }

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.fixed_dictionaries({}, optional=arguments))
    def check(kwargs):
        try:
            pipe(**kwargs)
        except (ValueError, TypeError) as err:
            named = [k for k in [*kwargs, "prompt_embeds"] if k in str(err)]
            assert named, (kwargs, str(err))

    check()


def test_a_call_too_large_for_the_machine_is_refused_before_allocating(pipe, monkeypatch):
    with pytest.raises(
        ValueError, match=r"num_images_per_prompt x prompts = 4000000 images of 1024x1024 need about"
    ):
        pipe("teapot", num_images_per_prompt=4_000_000, height=1024, width=1024)
    monkeypatch.setattr(type(pipe), "available_bytes", staticmethod(lambda device: 2**20))
    with pytest.raises(ValueError, match="more than the 0.0 GiB available"):
        pipe("teapot", num_images_per_prompt=64)
    assert len(pipe("teapot", output_type="np").images) == 1  # a small call still fits
