"""One data-source interface (data/source.py): in-memory sets and streams give the same batch
keys, resume inside an epoch by skipping, reshuffle per epoch and report what they skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import webdataset as wds
from accelerate import Accelerator
from test_webdataset import write_clean_shards

from t2i_drift.data.source import DataSource, InMemorySource, StreamSource
from t2i_drift.data.splits import caption_hash
from t2i_drift.training.builders import build_source
from t2i_drift.training.config import DataConfig


def _source(kind: str, root: Path, shuffle: bool = True) -> DataSource:
    if kind == "memory":
        data = DataConfig(name="openmoji", resolution=16, max_samples=24)
    else:
        write_clean_shards(root, shards=2, per_shard=12)
        with wds.TarWriter(str(root / "clean-02.tar")) as writer:  # one sample with a broken image
            writer.write({"__key__": "broken", "png": b"not a png", "txt": "broken"})
        data = DataConfig(
            name="webdataset", path=f"{root}/clean-{{00..02}}.tar", resolution=16, shuffle_buffer=8
        )
    return build_source(data, batch_size=4, seed=0, shuffle=shuffle)


@pytest.mark.parametrize("kind, cls", [("memory", InMemorySource), ("stream", StreamSource)])
def test_sources_share_one_interface(kind, cls, tmp_path):
    def fresh() -> DataSource:  # a new process: what a resumed run starts from
        source = _source(kind, tmp_path)
        source.prepare(Accelerator(cpu=True))
        return source

    source = fresh()
    assert isinstance(source, cls)
    epoch = list(source.batches(epoch=1))
    assert len(epoch) == 6  # 24 good samples, batches of 4
    for batch in epoch:
        assert {"pixel_values", "caption", "caption_id"} <= set(batch)
        assert batch["pixel_values"].shape == (4, 3, 16, 16)
        assert batch["caption_id"].tolist() == [caption_hash(c) for c in batch["caption"]]
    # resume inside the epoch: the same batches as the uninterrupted epoch, from the third on
    resumed = list(fresh().batches(epoch=1, skip=2))
    assert [b["caption"] for b in resumed] == [b["caption"] for b in epoch[2:]]
    # another epoch is another order of the same samples
    other = list(fresh().batches(epoch=2))
    assert [b["caption"] for b in other] != [b["caption"] for b in epoch]
    assert sorted(c for b in other for c in b["caption"]) == sorted(c for b in epoch for c in b["caption"])
    if kind == "stream":  # the broken sample was skipped and reported
        assert source.skips.total == 1 and "broken" in source.skips.report()
        assert source.captions is None
    else:
        assert source.captions == source.dataset.captions and source.skips.total == 0


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_unshuffled_source_reads_every_sample_once(kind, tmp_path):
    source = _source(kind, tmp_path, shuffle=False)
    source.prepare(Accelerator(cpu=True))
    captions = [c for batch in source.batches(epoch=0) for c in batch["caption"]]
    assert len(captions) == len(set(captions)) == 24
    assert captions == [c for batch in source.batches(epoch=5) for c in batch["caption"]]  # in order


def test_batch_size_larger_than_the_data_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="train.batch_size=64 exceeds the 24 training pairs"):
        build_source(DataConfig(name="openmoji", resolution=16, max_samples=24), batch_size=64, seed=0)
