"""HF datasets sources: local imagefolder with metadata and parquet files; every kind of bad row is
converted or skipped, counted and reported, never crashes and never vanishes silently."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_drift.data.hf import HFImageTextDataset
from t2i_drift.data.images import to_rgb_square


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    rows = []

    def add(name, image_or_bytes, text, alt=None):
        path = root / name
        if isinstance(image_or_bytes, bytes):
            path.write_bytes(image_or_bytes)
        else:
            image_or_bytes.save(path)
        rows.append({"file_name": name, "text": text, "alt": alt})

    add("rgb.png", Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)), "a red apple", "fruit")
    add("rgba.png", Image.new("RGBA", (32, 32), (255, 0, 0, 0)), "a transparent square")
    add("gray.png", Image.new("L", (32, 32), 100), "grey")
    add("deep.png", Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)), "sixteen bits")
    add("cmyk.jpg", Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "cmyk red")
    add("corrupt.png", b"this is not an image", "broken")
    truncated = _png(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    add("truncated.png", truncated[: len(truncated) // 2], "cut in half")
    add("tiny.png", Image.new("RGB", (4, 4), (0, 0, 255)), "too small")
    add("nocaption.png", Image.new("RGB", (32, 32), (0, 255, 0)), None)
    add("empty.png", Image.new("RGB", (32, 32), (0, 255, 0)), "   ")
    with open(root / "metadata.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return root


def test_imagefolder_converts_good_rows_and_reports_bad_ones(imagefolder):
    data = HFImageTextDataset(str(imagefolder), resolution=16, progress=False)
    assert sorted(data.captions) == sorted(
        ["a red apple", "a transparent square", "grey", "sixteen bits", "cmyk red"]
    )
    assert data.images.shape == (5, 16, 16, 3) and data.images.dtype == torch.uint8
    expected = {"undecodable image": 2, "smaller than 8px": 1, "missing or empty caption": 2}
    assert data.skipped.counts == expected
    report = data.report()
    assert "skipped 5" in report and "row" in report
    item = data[data.captions.index("a transparent square")]
    assert item["pixel_values"].shape == (3, 16, 16)
    assert torch.allclose(item["pixel_values"], torch.ones(3, 16, 16))  # alpha 0 -> white
    deep = data.images[data.captions.index("sixteen bits")]
    # 16-bit samples scale by 65535 (not by the image's own maximum, which would turn it white)
    assert deep.min() == deep.max() == round(40000 / 65535 * 255)
    red = data.images[data.captions.index("cmyk red")].float().mean((0, 1))
    assert red[0] > 200 and red[1] < 60  # CMYK converted


def test_several_caption_columns_pick_a_non_empty_one(imagefolder):
    data = HFImageTextDataset(
        str(imagefolder), caption_columns=["alt", "text"], resolution=16, progress=False
    )
    assert data.captions[0] in ("fruit", "a red apple")
    assert "a transparent square" in data.captions  # alt is empty there: the only non-empty caption
    again = HFImageTextDataset(
        str(imagefolder), caption_columns=["alt", "text"], resolution=16, progress=False
    )
    assert again.captions == data.captions  # seeded


def test_parquet_source_and_errors(tmp_path):
    import datasets

    images = [_png(Image.new("RGB", (20, 20), (i * 40, 0, 0))) for i in range(4)]
    table = datasets.Dataset.from_dict(
        {"jpg": [{"bytes": b, "path": None} for b in images], "caption": list("abcd")}
    )
    table = table.cast_column("jpg", datasets.Image())
    table.to_parquet(str(tmp_path / "part-0.parquet"))
    data = HFImageTextDataset(
        str(tmp_path / "*.parquet"),
        image_column="jpg",
        caption_columns="caption",
        resolution=8,
        progress=False,
    )
    assert data.captions == list("abcd") and data.skipped.total == 0
    table.save_to_disk(str(tmp_path / "saved"))  # arrow files, as datasets writes them
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    from_arrow = HFImageTextDataset(
        str(arrow), image_column="jpg", caption_columns="caption", resolution=8, progress=False
    )
    assert from_arrow.captions == list("abcd") and torch.equal(from_arrow.images, data.images)
    with pytest.raises(ValueError, match=r"columns \['text'\] not found"):
        HFImageTextDataset(str(tmp_path / "part-0.parquet"), image_column="jpg", progress=False)
    with pytest.raises(ValueError, match="data.path"):
        HFImageTextDataset(str(tmp_path / "missing.parquet"), progress=False)


def test_to_rgb_square_crops_the_centre():
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    image.paste((255, 255, 255), (10, 0, 20, 10))  # a white centre third
    out = to_rgb_square(image, 10)
    assert out.shape == (10, 10, 3) and out.mean() > 250


def test_training_on_an_imagefolder(imagefolder, tmp_path):
    from t2i_drift import DriftingPipeline
    from t2i_drift.training.config import load_config
    from t2i_drift.training.runs import train_t2i

    recipe = Path(__file__).parent.parent / "recipes" / "tiny_test.yaml"
    cfg = load_config(
        recipe,
        [
            "data.name=hf",
            f"data.path={imagefolder}",
            "train.batch_size=4",
            "train.max_steps=1",
            "features.effnet=null",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    pipe = DriftingPipeline.from_pretrained(train_t2i(cfg))
    assert pipe("grey", output_type="np").images.shape == (1, 16, 16, 3)


def test_an_image_declaring_a_huge_size_is_skipped_before_decoding(monkeypatch):
    import io

    from PIL import Image

    from t2i_drift.data import images

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buffer, format="PNG")
    monkeypatch.setattr(images, "MAX_DECODE_PIXELS", 64 * 48 - 1)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    skip = images.decode_pixels(buffer.getvalue(), 16, 8)
    assert skip == images.Skip("image too large to decode", f"64x48 exceeds {64 * 48 - 1} pixels")
    assert not decoded  # rejected from the header, before any pixel was decoded


def test_imagefolder_metadata_problems_are_counted_not_fatal(tmp_path):
    """A non-UTF-8 line, a malformed line, a line without file_name, a row whose image is gone and
    an image no row describes: each skipped and reported, the good rows read."""
    from t2i_drift.data.hf import HFStreamingImageTextDataset
    from t2i_drift.data.images import SkipLog

    for name, colour in (("a.png", (255, 0, 0)), ("b.png", (0, 255, 0)), ("orphan.png", (0, 0, 255))):
        Image.new("RGB", (32, 32), colour).save(tmp_path / name)
    lines = [
        json.dumps({"file_name": "a.png", "text": "red"}).encode(),
        b'{"file_name": "b.png", "text": "gr\\xfcn \xfc"}',  # latin-1 byte: not UTF-8
        b'{"file_name": "b.png", "text": ',  # cut short
        json.dumps({"text": "no file"}).encode(),
        json.dumps({"file_name": "gone.png", "text": "deleted"}).encode(),
        json.dumps({"file_name": "b.png", "text": "green"}).encode(),
    ]
    (tmp_path / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    data = HFImageTextDataset(str(tmp_path), resolution=16, progress=False)
    assert sorted(data.captions) == ["green", "red"]
    assert data.skipped.counts == {
        "metadata line not UTF-8": 1,
        "malformed metadata line": 2,
        "metadata row without its image": 1,
        "image without a metadata row": 1,
    }
    assert "metadata.jsonl line 2" in data.report() and "orphan.png" in data.report()
    stream = HFStreamingImageTextDataset(str(tmp_path), batch_size=1, resolution=16, shuffle_buffer=0)
    log = SkipLog()
    assert sorted(r.texts[0] for r in stream.records(log)) == ["green", "red"]
    assert log.total == 5
