"""Text encoder families (BERT-like, CLIP, CLIP with projection, T5), two encoders combined, and
the on-disk embedding cache. Tiny random CLIP / T5 configs share the real MiniLM tokenizer."""

import numpy as np
import pytest
import torch
import transformers
from helpers import run_python

from t2i_drift import DriftingPipeline, DriftingTransformer2DModel
from t2i_drift.text import (
    TextConditioner,
    TextEmbeddingCache,
    TextEncoderSlot,
    combine_embeddings,
    encode_prompts,
    encode_text,
    encoder_family,
    load_text_encoder,
)

VOCAB = 30522  # the MiniLM (BERT) tokenizer's vocabulary
SEP = 102  # its [SEP], CLIP's end-of-text token here


def _tiny(kind: str) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    if kind in ("clip", "clip_proj"):
        config = transformers.CLIPTextConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            projection_dim=16,
            eos_token_id=SEP,
        )
        cls = transformers.CLIPTextModelWithProjection if kind == "clip_proj" else transformers.CLIPTextModel
        return cls(config).eval()
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=24, d_kv=6, d_ff=48, num_layers=2, num_heads=4, decoder_start_token_id=0
    )
    return transformers.T5EncoderModel(config).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each tiny encoder saved with the MiniLM tokenizer, as a user's local folder would be."""
    root = tmp_path_factory.mktemp("encoders")
    tokenizer, _ = load_text_encoder("minilm")
    out = {}
    for kind in ("clip", "clip_proj", "t5"):
        _tiny(kind).save_pretrained(root / kind)
        tokenizer.save_pretrained(root / kind)
        out[kind] = str(root / kind)
    return out


PROMPTS = ["teapot", "a red apple on a table", "rocket"]


@pytest.mark.parametrize(
    "kind, cls, dim, pooled_dim",
    [
        ("clip", transformers.CLIPTextModel, 32, 32),
        ("clip_proj", transformers.CLIPTextModelWithProjection, 32, 16),
        ("t5", transformers.T5EncoderModel, 24, 24),
    ],
)
def test_each_family_loads_encodes_and_round_trips(folders, kind, cls, dim, pooled_dim):
    tokenizer, model = load_text_encoder(folders[kind])
    assert type(model) is cls and encoder_family(model) == kind
    assert not any(p.requires_grad for p in model.parameters())
    emb = encode_prompts(model, tokenizer, PROMPTS, max_length=16)
    assert (
        emb.embeds.shape == (3, 16, dim) and emb.mask.shape == (3, 16) and emb.pooled.shape == (3, pooled_dim)
    )
    assert emb.embeds[emb.mask == 0].abs().max() == 0  # zero at padding
    # the same numbers as the in-memory model it was saved from
    again = encode_prompts(_tiny(kind), tokenizer, PROMPTS, max_length=16)
    torch.testing.assert_close(emb.embeds, again.embeds)
    torch.testing.assert_close(emb.pooled, again.pooled)
    if kind != "t5":  # "auto" pooling is CLIP's own pooled output
        tokens = tokenizer(PROMPTS, padding="longest", return_tensors="pt")
        out = model(**tokens)
        own = out.text_embeds if kind == "clip_proj" else out.pooler_output
        torch.testing.assert_close(emb.pooled, own)
    else:  # T5 has no pooled output: the L2-normalized masked mean
        torch.testing.assert_close(emb.pooled.norm(dim=-1), torch.ones(3))


def test_minilm_is_bert_family_with_mean_pooling():
    tokenizer, model = load_text_encoder("minilm")
    assert encoder_family(model) == "bert"
    auto = encode_prompts(model, tokenizer, PROMPTS, 16, pooling="auto")
    mean = encode_prompts(model, tokenizer, PROMPTS, 16, pooling="mean")
    torch.testing.assert_close(auto.pooled, mean.pooled)
    with pytest.raises(ValueError, match="pooling"):
        encode_prompts(model, tokenizer, PROMPTS, 16, pooling="max")


def test_bad_encoder_path_names_it(tmp_path):
    with pytest.raises(ValueError, match="not-a-model"):
        load_text_encoder(str(tmp_path / "not-a-model"))


def test_two_encoders_combine_like_flux_and_sd3(folders):
    t5_tok, t5 = load_text_encoder(folders["t5"])
    clip_tok, clip = load_text_encoder(folders["clip_proj"])
    slots = [TextEncoderSlot(t5, t5_tok, 12), TextEncoderSlot(clip, clip_tok, 8)]
    parts = [encode_prompts(s.model, s.tokenizer, PROMPTS, s.max_length) for s in slots]
    flux = encode_text(slots, PROMPTS, token_sources=[0], pooled_sources=[1])
    torch.testing.assert_close(flux.embeds, parts[0].embeds)
    torch.testing.assert_close(flux.pooled, parts[1].pooled)
    sd3 = encode_text(slots, PROMPTS, token_sources=[0, 1], pooled_sources=[0, 1])
    assert sd3.embeds.shape == (3, 12 + 8, 32) and sd3.pooled.shape == (3, 24 + 16)
    torch.testing.assert_close(sd3.embeds[:, :12, :24], parts[0].embeds)
    assert sd3.embeds[:, :12, 24:].abs().max() == 0  # narrower encoder zero-padded in channels
    torch.testing.assert_close(sd3.embeds[:, 12:], parts[1].embeds)
    torch.testing.assert_close(sd3.mask, torch.cat([parts[0].mask, parts[1].mask], 1))
    with pytest.raises(ValueError, match="token_sources"):
        combine_embeddings(parts, [0, 2], [0])


def test_two_encoder_pipeline_saves_and_reloads(folders, tmp_path):
    t5_tok, t5 = load_text_encoder(folders["t5"])
    clip_tok, clip = load_text_encoder(folders["clip_proj"])
    torch.manual_seed(0)
    transformer = DriftingTransformer2DModel.from_preset(
        "tiny", sample_size=8, patch_size=4, text_embed_dim=24, pooled_embed_dim=16
    )
    pipe = DriftingPipeline(
        transformer=transformer,
        text_encoder=t5,
        tokenizer=t5_tok,
        text_encoder_2=clip,
        tokenizer_2=clip_tok,
        max_sequence_length=12,
        max_sequence_length_2=8,
        token_sources=["text_encoder"],
        pooled_sources=["text_encoder_2"],
    )
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPTS, output_type="np", generator=torch.Generator().manual_seed(0)).images
    pipe.save_pretrained(tmp_path / "pipe")
    np.save(tmp_path / "ref.npy", images)
    out = run_python(f"""
        import numpy as np, torch
        from t2i_drift import DriftingPipeline
        pipe = DriftingPipeline.from_pretrained({str(tmp_path / "pipe")!r})
        images = pipe({PROMPTS!r}, output_type="np", generator=torch.Generator().manual_seed(0)).images
        np.testing.assert_array_equal(images, np.load({str(tmp_path / "ref.npy")!r}))
        names = type(pipe.text_encoder).__name__, type(pipe.text_encoder_2).__name__
        print(*names, pipe.config.pooled_sources)
    """)
    assert "T5EncoderModel CLIPTextModelWithProjection ['text_encoder_2']" in out
    # text_encoder_2 is optional: without it the pipeline still runs on precomputed embeddings
    # (diffusers' memory-saving recipe), and a prompt names the missing encoder.
    embeds, mask, pooled = pipe.encode_prompt(PROMPTS)
    without = DriftingPipeline(
        transformer=transformer,
        text_encoder=t5,
        tokenizer=t5_tok,
        pooled_sources=["text_encoder_2"],
        max_sequence_length=12,
    )
    without.set_progress_bar_config(disable=True)
    got = without(
        prompt_embeds=embeds,
        prompt_attention_mask=mask,
        pooled_prompt_embeds=pooled,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    np.testing.assert_array_equal(got, images)
    with pytest.raises(ValueError, match="uses text_encoder_2 .* loaded as None"):
        without(PROMPTS)


def test_embedding_cache_encodes_each_caption_once(folders, tmp_path):
    tokenizer, model = load_text_encoder(folders["clip_proj"])
    conditioner = TextConditioner([TextEncoderSlot(model, tokenizer, 16)])
    captions = ["teapot", "rocket", "teapot", "a red apple on a table"]
    cache = TextEmbeddingCache(tmp_path, conditioner)
    first, encoded = cache.get(captions, progress=False)
    assert encoded == 3  # distinct captions
    direct = conditioner.encode_in_batches(captions, progress=False)
    for name in ("embeds", "mask", "pooled"):
        torch.testing.assert_close(getattr(first, name), getattr(direct, name))
    again, encoded = TextEmbeddingCache(tmp_path, conditioner).get(list(reversed(captions)), progress=False)
    assert encoded == 0
    torch.testing.assert_close(again.embeds, first.embeds.flip(0))
    more, encoded = cache.get(["rocket", "grinning face"], progress=False)
    assert encoded == 1 and len(list(cache.dir.glob("shard-*.safetensors"))) == 2
    torch.testing.assert_close(more.pooled[0], first.pooled[1])
    # anything that changes the output changes the key
    other = TextEmbeddingCache(tmp_path, TextConditioner([TextEncoderSlot(model, tokenizer, 8)]))
    assert other.dir != cache.dir
    mean = TextConditioner([TextEncoderSlot(model, tokenizer, 16, "mean")])
    assert TextEmbeddingCache(tmp_path, mean).dir != cache.dir
    # same config, other weights (e.g. a retrained encoder saved at the same path): a new key
    with torch.no_grad():
        model.text_projection.weight.add_(0.01)
    assert TextEmbeddingCache(tmp_path, conditioner).dir != cache.dir


def test_conditioner_table_lookup_equals_encoding(folders):
    """precompute + embed: rows of the table for known captions (bit for bit what encoding them
    gives), fresh encoding for unknown ones; sources are checked by name."""
    tokenizer, model = load_text_encoder(folders["clip_proj"])
    conditioner = TextConditioner([TextEncoderSlot(model, tokenizer, 16)])
    captions = ["teapot", "rocket", "teapot"]
    assert conditioner.precompute(captions, cache_dir=None, progress=False) == 2
    looked_up = conditioner.embed(["rocket", "teapot"])
    fresh = conditioner.encode_in_batches(["teapot", "rocket"], progress=False)
    assert torch.equal(looked_up.embeds, fresh.embeds[[1, 0]])
    assert torch.equal(looked_up.pooled, fresh.pooled[[1, 0]])
    unknown = conditioner.embed(["a red apple"])
    torch.testing.assert_close(unknown.pooled, conditioner.encode(["a red apple"]).pooled)
    assert conditioner.dims() == (fresh.embeds.shape[-1], fresh.pooled.shape[-1])
    with pytest.raises(ValueError, match="token_sources"):
        TextConditioner([TextEncoderSlot(model, tokenizer, 16)], token_sources=["text_encoder_2"])


def test_training_with_two_encoders_exports_both(folders, tmp_path):
    """1 training step: MiniLM tokens + MiniLM and CLIP pooled; the export holds both encoders and
    the caption cache is filled."""
    from pathlib import Path

    from t2i_drift.training.config import load_config
    from t2i_drift.training.runs import train_t2i

    recipe = Path(__file__).parent.parent / "recipes" / "tiny_test.yaml"
    cfg = load_config(
        recipe,
        [
            f"train.output_dir={tmp_path / 'run'}",
            "train.max_steps=1",
            f"text.encoder_2={folders['clip_proj']}",
            "text.max_length_2=8",
            "text.pooled_sources=[text_encoder, text_encoder_2]",
            f"text.cache_dir={tmp_path / 'cache'}",
        ],
    )
    pipe_dir = train_t2i(cfg)
    pipe = DriftingPipeline.from_pretrained(pipe_dir)
    assert type(pipe.text_encoder_2) is transformers.CLIPTextModelWithProjection
    assert pipe.transformer.config.pooled_embed_dim == 384 + 16
    assert len(list((tmp_path / "cache").rglob("shard-*.safetensors"))) == 1
    images = pipe("teapot", output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3)


def test_embedding_cache_concurrent_writers_never_lose_a_shard(folders, tmp_path, monkeypatch):
    """Two writers that list the cache at the same moment (a barrier inside the write, where the
    race was) keep both shards; a later reader finds every caption."""
    import threading

    import t2i_drift.text.cache as cache_module

    # One conditioner per writer, as in the real case of one per process: a fast tokenizer keeps
    # its padding state on the object, so two threads sharing one can corrupt each other's batch.
    conditioners = []
    for _ in range(2):
        tokenizer, model = load_text_encoder(folders["clip_proj"])
        conditioners.append(TextConditioner([TextEncoderSlot(model, tokenizer, 16)]))
    barrier = threading.Barrier(2, timeout=60)
    real_save = cache_module.save_file

    def racing_save(*args, **kwargs):
        barrier.wait()  # both writers have chosen their shard names
        return real_save(*args, **kwargs)

    monkeypatch.setattr(cache_module, "save_file", racing_save)
    sets = (["teapot", "rocket"], ["a red apple on a table", "sun"])
    errors: list[BaseException] = []

    def write(conditioner: TextConditioner, captions: list[str]) -> None:
        try:
            TextEmbeddingCache(tmp_path, conditioner).get(captions, progress=False)
        except BaseException as error:  # surfaced below: a thread's exception is otherwise only a warning
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=write, args=(k, c)) for k, c in zip(conditioners, sets, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.setattr(cache_module, "save_file", real_save)
    assert not errors, errors
    _, encoded = TextEmbeddingCache(tmp_path, conditioners[0]).get(sets[0] + sets[1], progress=False)
    assert encoded == 0


def test_embedding_cache_moves_a_corrupt_shard_aside_and_re_encodes(folders, tmp_path):
    tokenizer, model = load_text_encoder(folders["clip_proj"])
    conditioner = TextConditioner([TextEncoderSlot(model, tokenizer, 16)])
    cache = TextEmbeddingCache(tmp_path, conditioner)
    expected, _ = cache.get(["teapot", "rocket"], progress=False)
    (shard,) = cache.dir.glob("shard-*.safetensors")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # cut short, e.g. a full disk
    (cache.dir / "shard-stray.safetensors").write_text("not a shard")
    with pytest.warns(UserWarning, match=r"shard-.*\.safetensors is unreadable"):
        again, encoded = TextEmbeddingCache(tmp_path, conditioner).get(["teapot", "rocket"], progress=False)
    assert encoded == 2
    torch.testing.assert_close(again.pooled, expected.pooled)
    assert (cache.dir / "corrupt-shard-stray.safetensors").is_file() and (
        cache.dir / f"corrupt-{shard.name}"
    ).is_file()
