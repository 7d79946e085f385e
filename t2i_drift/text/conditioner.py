"""The text conditioning of a run: its frozen encoder(s), how their outputs combine, and a lookup
table of precomputed captions.

The trainer, the feature cache (scripts/cache_features.py) and ``DriftingPipeline`` all go through
a :class:`TextConditioner`, so a caption maps to the same conditioning everywhere:

    captions (B strings) -> embeds [B, T, Dt], mask [B, T], pooled [B, Dp]

with T = the sum of the token sources' ``max_length`` (text/encoders.py explains how several
encoders combine, SD3/FLUX style).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from t2i_drift.text.encoders import TextEmbeddings, TextEncoderSlot, encode_text, load_text_encoder

# Pipeline component names of the encoders, in slot order; configs name sources by these.
ENCODER_NAMES = ("text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class TextEncoderSpec:
    """Where one encoder comes from and how it is used (the ``text.*`` keys of one encoder)."""

    name_or_path: str
    subfolder: str | None = None
    max_length: int = 32
    pooling: str = "auto"
    pretrained: str | None = None  # open_clip encoders only
    layer: str = "last"  # open_clip encoders only


class TextConditioner:
    """Frozen text encoder(s) plus how they combine.

    Args:
        slots: one or two encoders (with tokenizer, max length and pooling), in ENCODER_NAMES order.
        token_sources: names of the encoders whose token embeddings condition the generator
            (concatenated along the sequence).
        pooled_sources: names of the encoders whose pooled embeddings enter the adaLN vector
            (concatenated along channels).
    """

    def __init__(
        self,
        slots: Sequence[TextEncoderSlot],
        token_sources: Sequence[str] = ("text_encoder",),
        pooled_sources: Sequence[str] = ("text_encoder",),
    ) -> None:
        if not 1 <= len(slots) <= len(ENCODER_NAMES):
            raise ValueError(f"a text conditioner takes 1 or 2 encoders, got {len(slots)}")
        available = ENCODER_NAMES[: len(slots)]
        for name, sources in (("token_sources", token_sources), ("pooled_sources", pooled_sources)):
            if not sources or any(s not in available for s in sources):
                raise ValueError(f"{name} must be a non-empty list of {list(available)}, got {list(sources)}")
        self.slots = list(slots)
        self.token_sources = list(token_sources)
        self.pooled_sources = list(pooled_sources)
        self.device = self.slots[0].model.device
        self._table: TextEmbeddings | None = None  # precomputed captions, on self.device
        self._rows: dict[str, int] = {}  # caption -> row of _table

    @classmethod
    def load(
        cls,
        encoders: Sequence[TextEncoderSpec],
        token_sources: Sequence[str] = ("text_encoder",),
        pooled_sources: Sequence[str] = ("text_encoder",),
    ) -> TextConditioner:
        """Load the encoders of ``encoders``, in ENCODER_NAMES order."""
        slots = []
        for spec in encoders:
            tokenizer, model = load_text_encoder(
                spec.name_or_path, subfolder=spec.subfolder, pretrained=spec.pretrained, layer=spec.layer
            )
            slots.append(TextEncoderSlot(model, tokenizer, spec.max_length, spec.pooling))
        return cls(slots, token_sources, pooled_sources)

    # ------------------------------------------------------------------------------------------
    @property
    def token_indices(self) -> list[int]:
        return [ENCODER_NAMES.index(s) for s in self.token_sources]

    @property
    def pooled_indices(self) -> list[int]:
        return [ENCODER_NAMES.index(s) for s in self.pooled_sources]

    @property
    def max_length(self) -> int:
        """T: token positions of the combined embeddings."""
        return sum(self.slots[i].max_length for i in self.token_indices)

    def to(self, device: torch.device | str) -> TextConditioner:
        for slot in self.slots:
            slot.model.to(device)
        self.device = torch.device(device)
        if self._table is not None:
            self._table = self._table.to(device)
        return self

    def dims(self) -> tuple[int, int]:
        """(Dt, Dp): widths of the token and pooled embeddings (from one probe encoding)."""
        probe = self.encode(["a"])
        return probe.embeds.shape[-1], probe.pooled.shape[-1]

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, captions: Sequence[str], device: torch.device | str | None = None) -> TextEmbeddings:
        """Encode ``captions`` now; the result is on ``device`` (default: the encoders' device)."""
        device = device if device is not None else self.device
        return encode_text(self.slots, list(captions), self.token_indices, self.pooled_indices, device)

    def encode_in_batches(
        self, captions: Sequence[str], batch_size: int = 256, progress: bool = True
    ) -> TextEmbeddings:
        """Encode many captions (e.g. a dataset's, once) with a progress bar; result on the CPU."""
        chunks = []
        for start in tqdm(range(0, len(captions), batch_size), desc="encode captions", disable=not progress):
            chunks.append(self.encode(captions[start : start + batch_size]).to("cpu"))
        return TextEmbeddings.cat(chunks)

    def precompute(self, captions: Sequence[str], cache_dir: str | Path | None, progress: bool = True) -> int:
        """Encode every distinct caption once (through the on-disk cache ``cache_dir`` when set) and
        keep them for :meth:`embed`. Returns how many captions had to be encoded."""
        from t2i_drift.text.cache import TextEmbeddingCache

        distinct = list(dict.fromkeys(captions))
        if cache_dir is None:
            table, encoded = self.encode_in_batches(distinct, progress=progress), len(distinct)
        else:
            table, encoded = TextEmbeddingCache(cache_dir, self).get(distinct, progress=progress)
        self._table = table.to(self.device)
        self._rows = {caption: row for row, caption in enumerate(distinct)}
        return encoded

    def embed(self, captions: Sequence[str]) -> TextEmbeddings:
        """Conditioning of a batch: rows of the precomputed table when every caption is in it,
        else encoded now (streamed data, whose captions are not known up front)."""
        if self._table is not None and all(c in self._rows for c in captions):
            rows = torch.tensor([self._rows[c] for c in captions], device=self.device)
            return self._table.index(rows)
        return self.encode(captions)
