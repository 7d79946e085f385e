"""webdataset and streaming HF sources: key variants, URL forms, splitting by node and worker,
resampling, epochs, every kind of bad sample and broken shard counted and reported; and
precomputed feature shards (scripts/cache_features.py) read transparently by the trainer."""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from t2i_drift.data.hf import HFStreamingImageTextDataset
from t2i_drift.data.images import SkipLog
from t2i_drift.data.streaming import PARTIAL_BATCH
from t2i_drift.data.webdataset import WebDatasetImageText

RECIPE = Path(__file__).parent.parent / "recipes" / "tiny_test.yaml"


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _colour(i: int) -> tuple[int, int, int]:
    return (20 * (i % 12), 100, 200 - 10 * (i % 12))


def write_clean_shards(root: Path, shards: int = 4, per_shard: int = 6) -> list[str]:
    """``shards`` shards of ``per_shard`` good samples each (png + txt); returns their keys."""
    keys = []
    for s in range(shards):
        with wds.TarWriter(str(root / f"clean-{s:02d}.tar")) as writer:
            for i in range(per_shard):
                key = f"s{s}-{i:02d}"
                writer.write(
                    {
                        "__key__": key,
                        "png": _encode(Image.new("RGB", (24, 24), _colour(i)), "PNG"),
                        "txt": f"caption {key}",
                    }
                )
                keys.append(key)
    return keys


def drain(source, limit: int | None = None) -> tuple[list[dict], SkipLog]:
    """All batches of ``source`` (at most ``limit``) and the merged skip log."""
    log, batches = SkipLog(), []
    for batch in source:
        log.extend(batch.pop("skipped", ()))
        if batch["caption"]:
            batches.append(batch)
        if limit is not None and len(batches) >= limit:
            break
    return batches, log


def keys_of(batches: list[dict]) -> list[str]:
    return [k.rsplit(":", 1)[1] for b in batches for k in b["key"]]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds_clean")
    return root, write_clean_shards(root)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """One shard with every kind of sample: key variants, conversions, and bad ones."""
    root = tmp_path_factory.mktemp("wds_messy")
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    truncated = _encode(noise, "PNG")
    samples = [
        {"__key__": "jpg", "jpg": _encode(noise, "JPEG"), "txt": "a jpeg"},
        {"__key__": "webp", "webp": _encode(noise, "WEBP"), "caption": "a webp"},
        {"__key__": "json", "png": _encode(noise, "PNG"), "json": json.dumps({"caption": "from json"})},
        {"__key__": "jsonlist", "png": _encode(noise, "PNG"), "json": json.dumps({"text": ["one", "two"]})},
        {
            "__key__": "rgba",
            "png": _encode(Image.new("RGBA", (16, 16), (255, 0, 0, 0)), "PNG"),
            "txt": "rgba",
        },
        {"__key__": "gray", "png": _encode(Image.new("L", (16, 16), 90), "PNG"), "txt": "gray"},
        {
            "__key__": "cmyk",
            "jpg": _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
            "txt": "cmyk",
        },
        {
            "__key__": "deep",
            "png": _encode(Image.fromarray(np.full((16, 16), 50000, np.uint16)), "PNG"),
            "txt": "16 bit",
        },
        # bad ones
        {"__key__": "corrupt", "png": b"not an image at all", "txt": "corrupt"},
        {"__key__": "truncated", "png": truncated[: len(truncated) // 2], "txt": "truncated"},
        {"__key__": "tiny", "png": _encode(Image.new("RGB", (4, 4)), "PNG"), "txt": "tiny"},
        {"__key__": "nocaption", "png": _encode(noise, "PNG")},
        {"__key__": "emptycaption", "png": _encode(noise, "PNG"), "txt": "   "},
        {"__key__": "noimage", "txt": "caption without image"},
        {"__key__": "badjson", "png": _encode(noise, "PNG"), "json": "{not json"},
    ]
    with wds.TarWriter(str(root / "messy.tar")) as writer:
        for sample in samples:
            writer.write(sample)
    # A shard cut in the middle of a member: its tail is unreadable.
    write_clean_shards(root, shards=1, per_shard=8)
    data = (root / "clean-00.tar").read_bytes()
    (root / "cut.tar").write_bytes(data[: len(data) // 2 + 700])
    return root


def test_every_key_variant_and_conversion_is_read_and_every_bad_sample_reported(messy):
    source = WebDatasetImageText(str(messy / "messy.tar"), batch_size=1, resolution=8, shuffle_buffer=0)
    batches, log = drain(source)
    captions = {k: b["caption"][0] for b in batches for k in keys_of([b])}
    assert set(captions) == {"jpg", "webp", "json", "jsonlist", "rgba", "gray", "cmyk", "deep"}
    assert captions["json"] == "from json" and captions["jsonlist"] in ("one", "two")
    assert captions["webp"] == "a webp"
    for b in batches:
        assert b["pixel_values"].shape == (1, 3, 8, 8) and b["pixel_values"].abs().max() <= 1.0
    rgba = next(b for b in batches if keys_of([b]) == ["rgba"])["pixel_values"]
    assert torch.allclose(rgba, torch.ones_like(rgba))  # transparent -> composited on white
    assert log.counts == {
        "undecodable image": 2,
        "smaller than 8px": 1,
        "missing or empty caption": 2,
        "no image member (jpg;jpeg;png;webp)": 1,
        "unreadable json caption": 1,
    }
    assert "noimage" in log.report() and "corrupt" in log.report()


def test_broken_shard_is_skipped_with_its_url_and_the_rest_is_read(messy):
    source = WebDatasetImageText(
        f"{messy}/cut.tar::{messy}/clean-00.tar", batch_size=2, resolution=8, shuffle_buffer=0
    )
    batches, log = drain(source)
    assert log.counts["unreadable shard or tar member"] == 1
    assert "cut.tar" in log.examples["unreadable shard or tar member"][0]
    # All 8 samples of the intact shard arrive (plus what precedes the cut in the broken one).
    assert sum(k.startswith("s0-") for k in keys_of(batches)) >= 8
    used = sum(len(b["caption"]) for b in batches)
    assert used + log.counts.get(PARTIAL_BATCH, 0) + log.counts.get("missing or empty caption", 0) >= 8


def test_url_forms_brace_list_pipe_and_http(clean):
    root, keys = clean
    expected = sorted(keys)
    forms = [
        f"{root}/clean-{{00..03}}.tar",
        f"{root}/clean-{{00..01}}.tar::{root}/clean-{{02..03}}.tar",
        [str(root / f"clean-{s:02d}.tar") for s in range(4)],
        f"pipe:cat {root}/clean-{{00..03}}.tar",
    ]
    for urls in forms:
        batches, log = drain(WebDatasetImageText(urls, batch_size=1, resolution=8, shuffle_buffer=0))
        assert sorted(keys_of(batches)) == expected, urls
        assert log.total == 0
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clean-{{00..03}}.tar"
        batches, log = drain(WebDatasetImageText(url, batch_size=1, resolution=8, shuffle_buffer=0))
        assert sorted(keys_of(batches)) == expected and log.total == 0
        missing = f"http://127.0.0.1:{server.server_address[1]}/nope.tar"
        batches, log = drain(WebDatasetImageText(missing, batch_size=1, resolution=8))
        assert not batches and log.counts["unreadable shard or tar member"] == 1
    finally:
        server.shutdown()
    batches, log = drain(WebDatasetImageText("pipe:exit 3", batch_size=1, resolution=8))
    assert not batches and log.counts["unreadable shard or tar member"] == 1
    # Resampled, a source whose every shard fails would never end: it gives up with an error.
    with pytest.raises(ValueError, match="100 shard reads failed in a row"):
        drain(WebDatasetImageText(f"{root}/missing-{{0..3}}.tar", batch_size=1, resolution=8, resampled=True))


def test_split_by_node_and_worker_covers_each_sample_once(clean, monkeypatch):
    root, keys = clean
    urls = f"{root}/clean-{{00..03}}.tar"
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        source = WebDatasetImageText(urls, batch_size=3, resolution=8, shuffle_buffer=4)
        loader = DataLoader(source, batch_size=None, num_workers=2)
        batches, log = drain(loader)
        assert log.total == 0  # 2 processes x 2 workers, one 6-sample shard each: 2 full batches
        seen.append(keys_of(batches))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(keys)


def test_epochs_reshuffle_deterministically_and_partial_batches_are_reported(clean):
    root, keys = clean
    source = WebDatasetImageText(f"{root}/clean-{{00..03}}.tar", batch_size=5, resolution=8, shuffle_buffer=8)
    orders = []
    for epoch in (0, 0, 1):
        source.set_epoch(epoch)
        batches, log = drain(source)
        assert log.counts == {PARTIAL_BATCH: len(keys) % 5}  # 24 samples: 4 batches + 4 left over
        orders.append(keys_of(batches))
    assert orders[0] == orders[1] and orders[0] != orders[2]


def test_resampled_shards_stream_forever_and_reproducibly(clean):
    root, keys = clean
    source = WebDatasetImageText(
        f"{root}/clean-{{00..03}}.tar", batch_size=4, resolution=8, resampled=True, shuffle_buffer=0
    )
    first, _ = drain(source, limit=15)  # 60 samples > the 24 in the shards: with replacement
    again, _ = drain(source, limit=15)
    assert len(first) == 15 and keys_of(first) == keys_of(again)
    assert set(keys_of(first)) <= set(keys) and len(set(keys_of(first))) < 60


def test_hf_streaming_parquet_with_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = _encode(Image.new("RGB", (20, 20), (10, 200, 30)), "PNG")
    rows = {
        "image": [{"bytes": good, "path": None}] * 6 + [{"bytes": b"junk", "path": None}],
        "text": [f"row {i}" for i in range(5)] + ["", "junk image"],
        "alt": ["alt"] * 7,
    }
    pq.write_table(pa.table(rows), tmp_path / "data.parquet")
    source = HFStreamingImageTextDataset(
        str(tmp_path / "data.parquet"), batch_size=2, resolution=8, shuffle_buffer=0
    )
    batches, log = drain(source)
    assert sorted(c for b in batches for c in b["caption"]) == [f"row {i}" for i in range(4)]
    assert log.counts == {"missing or empty caption": 1, "undecodable image": 1, PARTIAL_BATCH: 1}
    assert batches[0]["pixel_values"].shape == (2, 3, 8, 8)
    # The empty caption falls back to the other column when it is listed.
    two = HFStreamingImageTextDataset(
        str(tmp_path / "data.parquet"),
        batch_size=1,
        resolution=8,
        caption_columns=["text", "alt"],
        shuffle_buffer=0,
    )
    batches, log = drain(two)
    assert len(batches) == 6 and log.counts == {"undecodable image": 1}
    with pytest.raises(ValueError, match="data.path=.*columns \\['caption'\\] not found"):
        HFStreamingImageTextDataset(str(tmp_path / "data.parquet"), batch_size=1, caption_columns="caption")


def test_two_process_training_splits_shards_and_reports_every_process_skips(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on shards: each process reads its own
    shards (split_by_node) and the corrupt sample at the head of each of the 4 shards is reported
    once, from both processes, in the run summary."""
    import os
    import shutil
    import subprocess

    for s in range(4):
        with wds.TarWriter(str(tmp_path / f"d-{s}.tar")) as writer:
            writer.write({"__key__": f"bad{s}", "png": b"corrupt", "txt": "corrupt"})
            for i in range(5):
                image = Image.new("RGB", (24, 24), _colour(i + s))
                writer.write({"__key__": f"s{s}-{i}", "png": _encode(image, "PNG"), "txt": f"shape {s} {i}"})
    accelerate = shutil.which("accelerate")
    assert accelerate, "accelerate CLI not on PATH"
    root = Path(__file__).parent.parent
    proc = subprocess.run(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--main_process_port",
            "29541",
            str(root / "scripts/train_t2i.py"),
            "--config",
            str(RECIPE),
            "--output_dir",
            str(tmp_path / "run"),
            "--max_steps",
            "2",
            "data.name=webdataset",
            f"data.path={tmp_path}/d-{{0..3}}.tar",
            "data.shuffle_buffer=0",
            "train.batch_size=4",
            "features.effnet=null",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["steps"] == 2
    skipped = summary["data_skipped"]
    assert skipped["counts"] == {"undecodable image": 4}, skipped
    urls = " ".join(skipped["examples"]["undecodable image"])
    assert all(f"d-{s}.tar" in urls for s in range(3))  # examples are capped at 3


def test_streamed_training_resumes_exactly(clean, tmp_path):
    """2 steps straight == 1 step, stop, resume, 1 more, on shards: the resumed run skips the batch
    it already consumed in the epoch (the stream is deterministic for a seed and epoch)."""
    from safetensors.torch import load_file

    from t2i_drift.training.config import load_config
    from t2i_drift.training.runs import train_t2i

    root, _ = clean
    base = [
        "data.name=webdataset", f"data.path={root}/clean-{{00..03}}.tar", "data.shuffle_buffer=8",
        "train.batch_size=4", "features.effnet=null",
    ]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_t2i(load_config(RECIPE, [*base, f"train.output_dir={straight}", "train.max_steps=2"]))
    train_t2i(load_config(RECIPE, [*base, f"train.output_dir={resumed}", "train.max_steps=1"]))
    train_t2i(load_config(RECIPE, [*base, f"train.output_dir={resumed}", "train.max_steps=2",
                               "train.resume_from_checkpoint=latest"]))  # fmt: skip
    weights = "checkpoints/checkpoint-2/transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(straight / weights)), load_file(str(resumed / weights))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
