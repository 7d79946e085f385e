"""More than one positive per prompt: the caption-keyed bank, augmented views, the training wiring."""

from pathlib import Path

import pytest
import torch

from t2i_drift.data.caption_bank import CaptionBank
from t2i_drift.data.rendered import RenderedImageCaptionDataset
from t2i_drift.data.source import InMemorySource, StreamSource
from t2i_drift.data.splits import caption_hash
from t2i_drift.data.text_neighbours import TextNeighbourBank
from t2i_drift.training.config import ConfigError, DriftConfig, load_config
from t2i_drift.training.positives import ExtraPositives
from t2i_drift.training.runs import train_t2i

RECIPE = Path(__file__).parent.parent / "recipes" / "tiny_test.yaml"


class _Set(RenderedImageCaptionDataset):
    """Image i is filled with the value i, so a drawn image names its dataset position."""

    def __init__(self, captions: list[str]) -> None:
        self.captions = captions
        values = torch.arange(len(captions), dtype=torch.uint8)
        self.images = values.view(-1, 1, 1, 1).expand(-1, 4, 4, 3).clone()  # [N, 4, 4, 3]


CAPTIONS = ["a", "b", "a", "c", "a", "b", "a"]  # a: 0 2 4 6, b: 1 5, c: 3 alone


def _drawn(
    bank: CaptionBank | TextNeighbourBank, indices: list[int], count: int, seed: int = 0
) -> torch.Tensor:
    ids = torch.tensor([caption_hash(CAPTIONS[i]) for i in indices])
    pixels = bank.draw(ids, torch.tensor(indices), count, torch.Generator().manual_seed(seed))
    assert pixels.shape == (len(indices), count, 3, 4, 4)
    return ((pixels[:, :, 0, 0, 0] + 1) * 127.5).round().long()  # [B, count] dataset positions


def test_caption_bank_draws_other_images_of_the_caption_without_replacement():
    bank = CaptionBank(_Set(CAPTIONS))
    assert sorted(bank.images_per_caption().tolist()) == [1, 2, 4]
    picks = _drawn(bank, [0, 2, 1], count=3)
    assert sorted(picks[0].tolist()) == [2, 4, 6]  # every other "a" once, never the paired image 0
    assert sorted(picks[1].tolist()) == [0, 4, 6]
    assert picks[2].tolist() == [5, 5, 5]  # "b" has one other image: repeated
    assert torch.equal(picks, _drawn(bank, [0, 2, 1], count=3))  # seeded: the same draw
    assert any(not torch.equal(picks, _drawn(bank, [0, 2, 1], count=3, seed=s)) for s in range(1, 5))


def test_caption_bank_repeats_a_short_pool_and_a_lone_image():
    bank = CaptionBank(_Set(CAPTIONS))
    picks = _drawn(bank, [4, 3], count=5)
    first = picks[0].tolist()
    assert sorted(set(first)) == [0, 2, 6] and max(first.count(i) for i in (0, 2, 6)) == 2
    assert picks[1].tolist() == [3] * 5  # "c" has only its paired image


def test_caption_bank_refuses_an_unknown_caption():
    with pytest.raises(KeyError, match="not in the caption bank"):
        CaptionBank(_Set(CAPTIONS)).draw(torch.tensor([12345]), torch.tensor([0]), 1, torch.Generator())


def test_extra_positives_by_augmentation_are_seeded_views_of_the_paired_image():
    drift = DriftConfig(positives_per_prompt=3, positives_from="augment", positive_crop_scale=[0.5, 0.9])
    source = InMemorySource(_Set(CAPTIONS), batch_size=2)
    extra = ExtraPositives(drift, source, resolution=8)
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    views = extra({"pixel_values": pixels}, torch.Generator().manual_seed(0))
    assert views.shape == (2, 2, 3, 8, 8)
    assert torch.equal(views, extra({"pixel_values": pixels}, torch.Generator().manual_seed(0)))
    assert not torch.equal(views[0, 0], pixels[0])  # a crop of at most 90% of the area
    one = ExtraPositives(DriftConfig(), source, resolution=8)  # P = 1: nothing to draw
    assert one({"pixel_values": pixels}, torch.Generator()) is None


def test_caption_positives_refuse_a_stream_by_name():
    source = StreamSource.__new__(StreamSource)
    source.name = "data.path='shards/{0..9}.tar'"
    with pytest.raises(ValueError, match=r"drift.positives_from='caption'.*shards/\{0..9\}.tar.*augment"):
        ExtraPositives(DriftConfig(positives_per_prompt=2), source, resolution=8)


@pytest.mark.parametrize(
    "override, key",
    [
        ("drift.positives_per_prompt=0", "drift.positives_per_prompt"),
        ("drift.positive_crop_scale=[0.9, 0.5]", "drift.positive_crop_scale"),
        ("drift.positives_from=neighbours", "drift.positives_from"),
        ("drift.neighbours=0", "drift.neighbours"),
        ("drift.neighbour_temperature=0", "drift.neighbour_temperature"),
    ],
)
def test_positive_options_are_checked_when_the_config_loads(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(RECIPE, [override])


def _neighbour_bank(k: int, temperature: float) -> TextNeighbourBank:
    # distinct captions a, b, c; b is near a (cosine 0.8), c far from both
    pooled = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    return TextNeighbourBank(_Set(CAPTIONS), pooled, k=k, temperature=temperature)


def test_text_neighbours_draw_near_captions_in_proportion_to_their_similarity():
    bank = _neighbour_bank(k=2, temperature=0.2)
    assert TextNeighbourBank.distinct_captions(_Set(CAPTIONS)) == ["a", "b", "c"]
    picks = _drawn(bank, [0, 3], count=2000)
    a_images, b_images = {0, 2, 4, 6}, {1, 5}
    first = picks[0].tolist()
    assert set(first) <= (a_images - {0}) | b_images  # a's other images and b's; never c, never 0
    from_b = sum(p in b_images for p in first) / len(first)
    expected = 1 / (1 + torch.exp(torch.tensor(0.2 / 0.2)).item())  # softmax([1, 0.8] / 0.2)[1]
    assert abs(from_b - expected) < 0.04
    # c has no other image: its neighbours are a and b (its own paired image ranks last, not drawn)
    assert set(picks[1].tolist()) <= a_images | b_images
    assert torch.equal(picks, _drawn(bank, [0, 3], count=2000))  # seeded
    # a cold temperature keeps to the nearest candidates: a's own other images
    assert set(_drawn(_neighbour_bank(k=3, temperature=1e-3), [0], 200)[0].tolist()) == {2, 4, 6}


def test_text_neighbours_check_their_inputs_and_fall_back_to_the_paired_image():
    with pytest.raises(ValueError, match=r"\[3, D\]"):
        TextNeighbourBank(_Set(CAPTIONS), torch.zeros(2, 3), k=2, temperature=0.1)
    with pytest.raises(ValueError, match="k >= 1"):
        TextNeighbourBank(_Set(CAPTIONS), torch.eye(3), k=0, temperature=0.1)
    lone = TextNeighbourBank(_Set(["x"]), torch.ones(1, 4), k=4, temperature=0.1)
    drawn = lone.draw(torch.tensor([caption_hash("x")]), torch.tensor([0]), 3, torch.Generator())
    assert torch.equal(drawn, torch.full((1, 3, 3, 4, 4), -1.0))  # image 0 (value 0): the only one
    with pytest.raises(KeyError, match="text-neighbour bank"):
        lone.draw(torch.tensor([1]), torch.tensor([0]), 1, torch.Generator())


@pytest.mark.parametrize("mode", ["caption", "augment", "text_neighbours"])
def test_training_with_extra_positives_feeds_them_to_the_drift(tmp_path, mode, monkeypatch):
    """Two steps of the smoke recipe with 3 positives per prompt: every step draws 2 more images
    per prompt, and each key's groups reach the drift with 3 positives (and drift.mask_self)."""
    import t2i_drift.training.objectives.drifting as drifting_objective

    drawn, positives, masks = [], [], []
    original_draw, original_loss = ExtraPositives.__call__, drifting_objective.text_to_image_drift_loss

    def draw(self, batch, generator):
        pixels = original_draw(self, batch, generator)
        drawn.append(tuple(pixels.shape))
        return pixels

    def loss(*args, extra_positives=None, **kwargs):
        positives.append({k: v.shape[1] + 1 for k, v in extra_positives.items()})
        masks.append(args[5].mask_self)  # the DriftOptions
        return original_loss(*args, extra_positives=extra_positives, **kwargs)

    monkeypatch.setattr(ExtraPositives, "__call__", draw)
    monkeypatch.setattr(drifting_objective, "text_to_image_drift_loss", loss)
    overrides = [f"train.output_dir={tmp_path}", "drift.positives_per_prompt=3"]
    overrides += [f"drift.positives_from={mode}", f"drift.mask_self={mode == 'caption'}"]
    train_t2i(load_config(RECIPE, overrides))
    assert drawn == [(8, 2, 3, 16, 16)] * 2  # train.batch_size 8, resolution 16
    assert len(positives) == 2 and all(set(p.values()) == {3} for p in positives)
    assert masks == [mode == "caption"] * 2  # drift.mask_self reaches the field options
    assert (tmp_path / "pipeline" / "model_index.json").is_file()


@pytest.mark.parametrize("alone", ["drift.sibling_negatives=false", "drift.samples_per_prompt=1"])
def test_without_sibling_negatives_each_sample_reaches_the_drift_as_its_own_prompt(
    tmp_path, monkeypatch, alone
):
    """drift.sibling_negatives=false: the drift sees B*G one-sample prompts, each with its
    prompt's paired image, extra positives and caption id, all at alpha = 1 (G = 1: B prompts)."""
    import t2i_drift.training.objectives.drifting as drifting_objective

    calls = []
    original_loss = drifting_objective.text_to_image_drift_loss

    def loss(gen, real, G, alpha, ids, options, extra_positives=None, **kwargs):
        key = next(iter(gen))
        calls.append((G, gen[key].shape[0], real[key].shape[0], extra_positives[key].shape[:2], ids, alpha))
        return original_loss(gen, real, G, alpha, ids, options, extra_positives=extra_positives, **kwargs)

    monkeypatch.setattr(drifting_objective, "text_to_image_drift_loss", loss)
    overrides = [
        f"train.output_dir={tmp_path}",
        "drift.positives_per_prompt=2",
        "drift.positives_from=augment",
    ]
    overrides += [alone, "drift.mask_self=false", "drift.alpha_max=1"]
    cfg = load_config(RECIPE, overrides)
    train_t2i(cfg)
    G, B = cfg.drift.samples_per_prompt, cfg.train.batch_size
    assert len(calls) == cfg.train.max_steps
    for groups, n_gen, n_real, extra, ids, alpha in calls:
        assert (groups, n_gen, n_real, tuple(extra)) == (1, B * G, B * G, (B * G, 1))
        assert torch.equal(ids.view(B, G), ids.view(B, G)[:, :1].expand(B, G))  # a prompt's copies
        assert torch.all(alpha == 1)
