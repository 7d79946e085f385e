"""OpenCLIP text towers (``text.encoder=open_clip:<model>``): a tiny random open_clip model, built
offline from a registered config, gives the same pooled output as open_clip's own ``encode_text``
and the same token ids as its tokenizer; the penultimate layer is the raw second-to-last block;
training exports the tower as safetensors and a fresh process reloads identical images, also
through the hub layout."""

import json

import numpy as np
import open_clip
import pytest
import torch
from helpers import run_python
from safetensors.torch import save_file

from t2i_drift import DriftingPipeline
from t2i_drift.hub import write_hub_layout
from t2i_drift.text import (
    OpenCLIPTextModel,
    TextConditioner,
    TextEmbeddingCache,
    TextEncoderSlot,
    encode_prompts,
    load_text_encoder,
)
from t2i_drift.text.cache import encoder_key
from t2i_drift.training.config import ConfigError, load_config

TINY = "t2i-drift-tiny-openclip"
PROMPTS = [
    "a photo of a cat",
    "!! hi!!",
    "Café au lait &amp; crème brûlée!!",  # ftfy and HTML unescaping happen before the tokenizer
    "  several   spaces\tand TABS ",
    "naïve Ünïcödé 東京 🚀",
    "word " * 40,  # longer than max_length: the token states are cut, the pooled output is not
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Register a 3-layer, 32-wide open_clip model (random weights) and save its checkpoint."""
    root = tmp_path_factory.mktemp("open_clip")
    config = {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3},
    }
    (root / f"{TINY}.json").write_text(json.dumps(config))
    open_clip.add_model_config(root / f"{TINY}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "ckpt.safetensors")
    return model, str(root / "ckpt.safetensors")


def test_pooled_output_and_token_ids_equal_open_clip(tiny):
    model, ckpt = tiny
    tokenizer, encoder = load_text_encoder(f"open_clip:{TINY}", pretrained=ckpt)
    assert isinstance(encoder, OpenCLIPTextModel) and not encoder.text.transformer.resblocks[0].training
    ours = tokenizer(
        encoder.clean_prompts(PROMPTS),
        padding="max_length",
        max_length=77,
        truncation=True,
        return_tensors="pt",
    )
    theirs = open_clip.get_tokenizer(TINY)(PROMPTS)
    assert torch.equal(ours["input_ids"].masked_fill(ours["attention_mask"] == 0, 0), theirs)
    assert tokenizer("wow!")["input_ids"] == open_clip.get_tokenizer(TINY)(["wow!"])[0, :4].tolist()

    emb = encode_prompts(encoder, tokenizer, PROMPTS, max_length=16)
    with torch.no_grad():
        expected = model.encode_text(theirs)
    torch.testing.assert_close(emb.pooled, expected, rtol=0, atol=1e-5)
    assert emb.embeds.shape == (len(PROMPTS), 16, 32)
    assert emb.mask[0].tolist() == [1] * 7 + [0] * 9  # <start> a photo of a cat <end>
    assert emb.mask[-1].sum() == 16 and torch.all(emb.embeds[0, 7:] == 0)
    # max_length beyond the 77-token context, and a 92-token prompt: truncated to the context as
    # open_clip truncates, the states zero-padded to max_length.
    long = [*PROMPTS, "word " * 90]
    wide = encode_prompts(encoder, tokenizer, long, max_length=100)
    assert wide.embeds.shape[1] == 100 and wide.mask[:, 77:].sum() == 0 and wide.mask[-1].sum() == 77
    with torch.no_grad():
        expected_long = model.encode_text(open_clip.get_tokenizer(TINY)(long))
    torch.testing.assert_close(wide.pooled, expected_long, rtol=0, atol=1e-5)


def test_last_and_penultimate_token_states(tiny):
    model, ckpt = tiny
    ids = open_clip.get_tokenizer(TINY)(PROMPTS[:2])
    with torch.no_grad():
        x = model.token_embedding(ids) + model.positional_embedding
        for block in model.transformer.resblocks[:-1]:
            x = block(x, attn_mask=model.attn_mask)
        penultimate = x
        last = model.ln_final(model.transformer.resblocks[-1](x, attn_mask=model.attn_mask))
    for layer, expected in (("last", last), ("penultimate", penultimate)):
        _, encoder = load_text_encoder(f"open_clip:{TINY}", pretrained=ckpt, layer=layer)
        with torch.no_grad():
            got = encoder(ids[:, :10]).last_hidden_state
        torch.testing.assert_close(got, expected[:, :10], rtol=0, atol=1e-5)


def test_caption_cache_keys_the_tower_by_weights_and_layer(tiny, tmp_path):
    _, ckpt = tiny
    conditioners = {}
    for name, pretrained, layer in (
        ("ckpt", ckpt, "last"),
        ("pen", ckpt, "penultimate"),
        ("rand", "none", "last"),
    ):
        tokenizer, encoder = load_text_encoder(f"open_clip:{TINY}", pretrained=pretrained, layer=layer)
        conditioners[name] = TextConditioner([TextEncoderSlot(encoder, tokenizer, 16)])
    keys = {name: encoder_key(c) for name, c in conditioners.items()}
    assert len(set(keys.values())) == 3
    cache = TextEmbeddingCache(tmp_path, conditioners["pen"])
    first, encoded = cache.get(PROMPTS[:3], progress=False)
    again, encoded_again = TextEmbeddingCache(tmp_path, conditioners["pen"]).get(PROMPTS[:3], progress=False)
    assert (encoded, encoded_again) == (3, 0) and torch.equal(first.embeds, again.embeds)
    torch.testing.assert_close(first.pooled, conditioners["pen"].encode(PROMPTS[:3]).pooled)


def test_errors_name_the_model_and_the_key(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model 'no-such-model'"):
        load_text_encoder("open_clip:no-such-model", pretrained="none")
    with pytest.raises(ValueError, match="needs text.pretrained"):
        load_text_encoder(f"open_clip:{TINY}")
    with pytest.raises(ValueError, match="neither a file nor a pretrained tag"):
        load_text_encoder(f"open_clip:{TINY}", pretrained="no_such_tag")
    with pytest.raises(ValueError, match="cannot fetch the 'openai' weights"):  # tests run offline
        load_text_encoder("open_clip:RN50", pretrained="openai")
    bad = tmp_path / "other.safetensors"
    save_file({"token_embedding.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ValueError, match="does not fit"):
        load_text_encoder(f"open_clip:{TINY}", pretrained=str(bad))
    with pytest.raises(ValueError, match="open_clip:<model> encoders only"):
        load_text_encoder("minilm", layer="penultimate")
    with pytest.raises(ConfigError, match="text.pretrained"):
        load_config(None, ["text.pretrained=none"])  # minilm takes no open_clip weights
    with pytest.raises(ConfigError, match="text.layer_2"):
        load_config(None, ["text.layer_2=penultimate"])


@pytest.mark.parametrize(
    "overrides, open_clip_component",
    [
        ([f"text.encoder=open_clip:{TINY}", "text.pretrained=none"], "text_encoder"),
        (  # SDXL-like: a second encoder's penultimate token states next to the first's
            [
                f"text.encoder_2=open_clip:{TINY}",
                "text.pretrained_2=none",
                "text.layer_2=penultimate",
                "text.max_length_2=12",
                "text.token_sources=[text_encoder, text_encoder_2]",
                "text.pooled_sources=[text_encoder_2]",
            ],
            "text_encoder_2",
        ),
    ],
    ids=["open_clip", "minilm+open_clip"],
)
def test_training_exports_and_a_fresh_process_reloads(tiny, tmp_path, overrides, open_clip_component):
    from pathlib import Path

    from t2i_drift.training.runs import train_t2i

    recipe = Path(__file__).parent.parent / "recipes" / "tiny_test.yaml"
    cfg = load_config(
        recipe,
        [f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2", "text.cache_dir=null", *overrides],
    )
    pipe_dir = train_t2i(cfg)
    component = Path(pipe_dir) / open_clip_component
    assert sorted(p.name for p in component.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    pipe = DriftingPipeline.from_pretrained(pipe_dir)
    assert isinstance(getattr(pipe, open_clip_component), OpenCLIPTextModel)
    if open_clip_component == "text_encoder":  # the card names the tower and its weights
        assert f"text_encoder: open_clip:{TINY} (none)" in (Path(pipe_dir) / "README.md").read_text()
    expected = pipe(
        "a red circle", num_images_per_prompt=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    np.save(tmp_path / "expected.npy", expected)
    hub_dir = tmp_path / "hub"
    write_hub_layout(pipe_dir, hub_dir)
    assert (hub_dir / open_clip_component / "open_clip_text.py").is_file()
    out = run_python(f"""
        import numpy as np, sys, torch
        from diffusers import DiffusionPipeline
        for kind, path in (("standard", {str(pipe_dir)!r}), ("hub", {str(hub_dir)!r})):
            if kind == "standard":
                import t2i_drift
                pipe = t2i_drift.DriftingPipeline.from_pretrained(path)
            else:
                pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
            got = pipe("a red circle", num_images_per_prompt=2, output_type="np",
                       generator=torch.Generator().manual_seed(0)).images
            np.testing.assert_array_equal(got, np.load({str(tmp_path / "expected.npy")!r}))
            print("IDENTICAL", kind, type(pipe.{open_clip_component}).__name__)
        print("open_clip imported:", "open_clip" in sys.modules)
    """)
    assert "IDENTICAL standard OpenCLIPTextModel" in out and "IDENTICAL hub OpenCLIPTextModel" in out
