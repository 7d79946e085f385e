"""On-disk cache of text embeddings, so training and evaluation encode each caption once.

Layout: ``<root>/<encoder key>/shard-<unique id>.safetensors``. Each shard holds ``embeds`` [n, T_k, Dt]
(trimmed after the last token position any of its captions uses; zero-padded back on load), ``mask``
[n, T_k], ``pooled`` [n, Dp] and, in its safetensors metadata, the sha256 of each caption in row
order. The encoder key hashes everything that changes the output: every encoder's class, config
and a fingerprint of its weights, its tokenizer's vocabulary, max length and pooling, and the
token/pooled sources. A shard is written once under a name no other writer can pick (atomically:
temp file, then rename) and never modified, so concurrent writers and readers are safe; captions
missing from the cache are encoded and written as a new shard. A shard that cannot be read (cut
short, not a shard) is renamed ``corrupt-<name>`` with a warning naming it, and its captions are
encoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from t2i_drift.text.encoders import TextEmbeddings

if TYPE_CHECKING:
    from t2i_drift.text.conditioner import TextConditioner


def default_cache_dir() -> Path:
    """``$HF_HOME/t2i_drift/text_embeddings`` (HF_HOME defaults to ~/.cache/huggingface)."""
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(hf_home) / "t2i_drift" / "text_embeddings"


def caption_key(caption: str) -> str:
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Hash of every parameter's name, shape and L1 norm: a retrained or swapped encoder with the
    same config gets a new key (one pass over the weights, once per cache)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}:{tuple(p.shape)}:{float(p.float().abs().sum()):.6e};".encode())
    return h.hexdigest()


def _tokenizer_fingerprint(tokenizer) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}:{vocab}".encode()).hexdigest()


def _config_dict(model: torch.nn.Module) -> dict:
    config = model.config
    if hasattr(config, "to_json_string"):  # transformers
        return json.loads(config.to_json_string(use_diff=False))
    return json.loads(json.dumps(dict(config), default=str))  # diffusers FrozenDict


def config_fingerprint(model: torch.nn.Module) -> str:
    """Hash of a transformers / diffusers model config, without the entries that change when the
    same model is copied or loaded by another library version."""
    config = _config_dict(model)
    for volatile in ("_name_or_path", "transformers_version", "_diffusers_version"):
        config.pop(volatile, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def encoder_key(conditioner: TextConditioner) -> str:
    """A short hash of everything that determines the embeddings (module docstring).

    Paths are left out on purpose (a model copied elsewhere keeps its key); the weights, config
    and vocabulary identify it.
    """
    encoders = []
    for s in conditioner.slots:
        encoders.append(
            {
                "class": type(s.model).__name__,
                "config": config_fingerprint(s.model),
                "weights": weights_fingerprint(s.model),
                "dtype": str(s.model.dtype),
                "tokenizer": _tokenizer_fingerprint(s.tokenizer),
                "max_length": s.max_length,
                "pooling": s.pooling,
            }
        )
    desc = {
        "encoders": encoders,
        "token_sources": conditioner.token_indices,
        "pooled_sources": conditioner.pooled_indices,
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


class TextEmbeddingCache:
    """Embeddings of captions under one encoder key (see the module docstring)."""

    def __init__(self, root: str | Path, conditioner: TextConditioner) -> None:
        self.conditioner = conditioner
        self.dir = Path(root) / encoder_key(conditioner)
        self.max_length = conditioner.max_length

    def _shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.safetensors"))

    def _quarantine(self, shard: Path, err: Exception) -> None:
        """Move an unreadable shard out of the cache (kept for inspection) and say so."""
        target = shard.with_name(f"corrupt-{shard.name}")
        try:
            os.replace(shard, target)
        except FileNotFoundError:  # another process moved it first
            return
        warnings.warn(
            f"text embedding cache: {shard} is unreadable ({type(err).__name__}: {err}); moved to "
            f"{target.name}, its captions are encoded again",
            stacklevel=3,
        )

    def _read_keys(self, shard: Path) -> list[str]:
        """The caption hashes of a shard, after checking that its tensors have one row each."""
        with safe_open(str(shard), framework="pt") as f:
            keys = json.loads((f.metadata() or {})["captions"])
            rows = {name: f.get_slice(name).get_shape()[0] for name in ("embeds", "mask", "pooled")}
        if set(rows.values()) != {len(keys)}:
            raise ValueError(f"{len(keys)} captions but tensor rows {rows}")
        return keys

    def _index(self) -> dict[str, tuple[Path, int]]:
        index: dict[str, tuple[Path, int]] = {}
        for shard in self._shards():
            try:
                keys = self._read_keys(shard)
            except FileNotFoundError:
                continue
            except Exception as err:  # any unreadable file: quarantine, re-encode
                self._quarantine(shard, err)
                continue
            for row, key in enumerate(keys):
                index.setdefault(key, (shard, row))
        return index

    def _write_shard(self, keys: list[str], emb: TextEmbeddings) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        emb = emb.trimmed()
        tensors = {
            "embeds": emb.embeds.contiguous().cpu(),
            "mask": emb.mask.contiguous().cpu(),
            "pooled": emb.pooled.contiguous().cpu(),
        }
        # A name no concurrent writer can choose: two processes never replace each other's shard.
        name = uuid.uuid4().hex
        final = self.dir / f"shard-{name}.safetensors"
        tmp = self.dir / f".tmp-{name}"
        save_file(tensors, str(tmp), metadata={"captions": json.dumps(keys)})
        os.replace(tmp, final)

    def get(
        self, captions: Sequence[str], batch_size: int = 256, progress: bool = True, _retry: bool = True
    ) -> tuple[TextEmbeddings, int]:
        """Embeddings of ``captions`` in order, encoding (and caching) only the missing ones.

        Returns:
            the embeddings (on CPU) and how many distinct captions had to be encoded.
        """
        captions = list(captions)
        keys = [caption_key(c) for c in captions]
        index = self._index()
        missing: dict[str, str] = {}
        for key, caption in zip(keys, captions, strict=True):
            if key not in index:
                missing.setdefault(key, caption)
        if missing:
            fresh = self.conditioner.encode_in_batches(
                list(missing.values()), batch_size=batch_size, progress=progress
            )
            self._write_shard(list(missing), fresh)
            index = self._index()
        rows: dict[Path, list[tuple[int, int]]] = {}
        for out_row, key in enumerate(keys):
            shard, row = index[key]
            rows.setdefault(shard, []).append((out_row, row))
        out: TextEmbeddings | None = None
        for shard, pairs in rows.items():
            out_idx = torch.tensor([o for o, _ in pairs])
            src_idx = torch.tensor([r for _, r in pairs])
            try:
                with safe_open(str(shard), framework="pt") as f:
                    fields = (f.get_tensor(name)[src_idx] for name in ("embeds", "mask", "pooled"))
                    part = TextEmbeddings(*fields)
            except Exception as err:  # cut short after its header was read
                if _retry:
                    self._quarantine(shard, err)
                    return self.get(captions, batch_size, progress, _retry=False)
                raise
            part = part.padded(self.max_length)  # back to the full length
            if out is None:
                fields = (part.embeds, part.mask, part.pooled)
                out = TextEmbeddings(*(torch.empty((len(keys), *t.shape[1:]), dtype=t.dtype) for t in fields))
            out.embeds[out_idx], out.mask[out_idx], out.pooled[out_idx] = part.embeds, part.mask, part.pooled
        return out, len(missing)
