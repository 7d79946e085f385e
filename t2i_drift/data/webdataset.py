"""Image-caption pairs from webdataset shards (tar files of ``<key>.<ext>`` members).

``urls`` accepts what webdataset accepts: a local path, a brace pattern
(``shards/train-{000000..000099}.tar``), several patterns joined by ``::``, a list,
``pipe:<command>`` (e.g. ``pipe:aws s3 cp s3://bucket/shard.tar -``) and http(s) URLs (read with
curl). Each sample's image is its first member among ``image_keys`` (default ``jpg;jpeg;png;webp``)
and its captions come from ``caption_keys`` (default ``txt;caption;json``; from a ``json`` member
the ``caption`` / ``text`` / ``txt`` field, a list of strings allowed). Samples written by
scripts/cache_features.py also carry a ``t2i.safetensors`` member with precomputed text
embeddings and VAE latents, which the batch passes on (data/streaming.py) and the trainer uses
instead of encoding again.

Sharding: without ``resampled`` each epoch reads every shard once, shard order shuffled per epoch,
shards split between processes (``split_by_node``) and DataLoader workers (``split_by_worker``), so
give at least processes x workers shards. With ``resampled`` every worker draws shards with
replacement forever (webdataset ``ResampledShards``, seeded per epoch, process and worker): the
usual choice for large multi-node runs, where equal splits are not possible.

Broken data: an unreadable shard or tar member (truncated archive, failed pipe command, HTTP
error) is skipped with the rest of that shard and recorded with its URL; undecodable images,
missing captions and tiny images are skipped per sample; all of them are counted and reported.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence

import torch
import webdataset as wds
from safetensors.torch import load as load_safetensors

from t2i_drift.data.images import SkipLog
from t2i_drift.data.streaming import Record, StreamingImageTextDataset

FEATURES_MEMBER = "t2i.safetensors"
"""Member name (extension) of precomputed per-sample tensors written by scripts/cache_features.py."""

_JSON_CAPTION_FIELDS = ("caption", "text", "txt")


def split_keys(keys: str | Sequence[str]) -> list[str]:
    """``"jpg;png"`` or ``["jpg", "png"]`` -> ``["jpg", "png"]`` (lower case, no dots)."""
    items = keys.split(";") if isinstance(keys, str) else list(keys)
    return [k.strip().lower().lstrip(".") for k in items if k.strip()]


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a serialized safetensors blob (the format's JSON header, read
    directly: ``safetensors.torch.load`` returns only the tensors)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__", {}) or {}


def captions_from_member(ext: str, value: bytes) -> list[str]:
    """Candidate captions of one member: text as is, JSON by field (raises ValueError if malformed)."""
    text = value.decode("utf-8")
    if ext != "json":
        return [text]
    obj = json.loads(text)
    if isinstance(obj, str):
        return [obj]
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object or string, got {type(obj).__name__}")
    out: list[str] = []
    for name in _JSON_CAPTION_FIELDS:
        value = obj.get(name)
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str))
    return out


class WebDatasetImageText(StreamingImageTextDataset):
    """Streaming image-caption batches from webdataset shards (module docstring).

    Args:
        urls: shard URL(s): path, brace pattern, ``a::b`` list, ``pipe:``, http(s); or a list.
        batch_size, resolution, min_size, seed: see :class:`StreamingImageTextDataset`.
        image_keys: member extensions tried in order for the image.
        caption_keys: member extensions whose captions are candidates (all of them are used).
        resampled: draw shards with replacement, forever (no epochs).
        shuffle_buffer: samples in the shuffle buffer (0: shard order).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        batch_size: int,
        resolution: int = 32,
        image_keys: str | Sequence[str] = "jpg;jpeg;png;webp",
        caption_keys: str | Sequence[str] = "txt;caption;json",
        resampled: bool = False,
        shuffle_buffer: int = 1000,
        min_size: int = 8,
        seed: int = 0,
    ):
        super().__init__(batch_size, resolution, min_size, seed)
        self.urls = wds.shardlists.expand_urls(urls) if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError(f"data.path={urls!r}: no shard URLs")
        self.image_keys = split_keys(image_keys)
        self.caption_keys = split_keys(caption_keys)
        if not self.image_keys or not self.caption_keys:
            raise ValueError("data.image_keys and data.caption_keys must each name at least one extension")
        self.resampled = resampled
        self.shuffle_buffer = shuffle_buffer

    def shards(self) -> Iterator[dict]:
        """This process's and worker's shard URLs for the current epoch, as webdataset dicts."""
        if self.resampled:
            # deterministic: webdataset combines this seed with the epoch and its worker seed
            # (rank * 1000 + worker), so every process and worker draws its own sequence.
            source = wds.ResampledShards(self.urls, seed=self.seed, deterministic=True)
            source.epoch = self.epoch - 1  # ResampledShards increments it at iterator start
            return iter(source)
        urls = list(self.urls)
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(urls)  # same order on every process
        return wds.split_by_worker(wds.split_by_node({"url": u} for u in urls))

    def records(self, log: SkipLog) -> Iterator[Record]:
        # A resampled stream never ends, so a source whose every shard fails would spin forever
        # without a batch: give up after this many failures in a row with no sample between.
        give_up = max(100, 10 * len(self.urls))
        failures = [0]

        def on_error(exn: Exception) -> bool:
            # webdataset appends (stream, url) to the exception's args; keep the URL.
            url = exn.args[-1] if len(exn.args) > 1 and isinstance(exn.args[-1], str) else "?"
            detail = exn.args[0] if exn.args else ""
            log.add("unreadable shard or tar member", f"{url}: {type(exn).__name__}: {detail}")
            failures[0] += 1
            if failures[0] >= give_up:
                raise ValueError(f"data.path: {failures[0]} shard reads failed in a row ({log.report()})")
            return True  # skip the rest of this shard, keep going

        samples = wds.tarfile_to_samples(handler=on_error)(self.shards())
        if self.shuffle_buffer > 0:
            rng = random.Random(self.worker_seed())
            initial = min(100, self.shuffle_buffer)
            samples = wds.shuffle(self.shuffle_buffer, initial=initial, rng=rng)(samples)
        for sample in samples:
            failures[0] = 0
            yield from self._record(sample, log)

    def _record(self, sample: dict, log: SkipLog) -> Iterator[Record]:
        key = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        image = next((sample[k] for k in self.image_keys if k in sample), None)
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, str] = {}
        if FEATURES_MEMBER in sample:
            blob = sample[FEATURES_MEMBER]
            try:
                tensors, meta = load_safetensors(blob), safetensors_metadata(blob)
            except Exception as err:  # noqa: BLE001 - any malformed blob is one skipped sample
                log.add("unreadable precomputed features", f"{key} ({type(err).__name__}: {err})")
                return
        if image is None and "latents" not in tensors:
            log.add(f"no image member ({';'.join(self.image_keys)})", f"{key} has {sorted(_exts(sample))}")
            return
        texts: list[str] = []
        for ext in self.caption_keys:
            if ext in sample:
                try:
                    texts.extend(captions_from_member(ext, sample[ext]))
                except (UnicodeDecodeError, ValueError) as err:
                    log.add(f"unreadable {ext} caption", f"{key} ({type(err).__name__}: {err})")
                    return
        yield Record(key=key, image=image, texts=texts, tensors=tensors, meta=meta)


def _exts(sample: dict) -> list[str]:
    return [k for k in sample if not k.startswith("__")]
