"""The evaluation suites of the built-in data sets: what scripts/evaluate.py and
scripts/compare_objectives.py measure for one pipeline at one number of sampling steps (NFE).

A suite computes its real-image reference once (real features, the real-vs-real floor, the
checker's ceiling, real-image diversity) and then scores any number of (pipeline, NFE) pairs:

``openmoji``
    FD-EffNetLite0 of one generated image per training caption (``num`` captions spread over the
    sorted list) against their real images, and of the validation captions against theirs, next to
    the floor (the real training images against the real validation images); paired retrieval
    top-1 / top-5 of the generated training images; per-prompt diversity; latency.
``photos``
    ``num`` images (default 32) for each photo subject, against the validation crops of the subject
    (32 each, other crops of the same photographs): FD-EffNetLite0 over all subjects, next to the
    floor (training-split crops against validation crops); subject accuracy (is a generated image's
    nearest reference crop, cosine in EfficientNet-Lite0 features, of its own subject? The reference
    crops are drawn with the training split's seed, up to 64 per subject) next to the
    validation crops' own; the detail ratio (eval/detail.py: about 1 for real texture, near 0
    for a blur); per-prompt diversity against the real crops'; latency.
``shapes``
    per-attribute checker accuracy of ``seeds`` images per scene on the ``train`` and ``heldout``
    scenes, next to the real renders' accuracy (the checker's ceiling); per-prompt diversity
    against that of jittered real renders of the same caption; latency.

FD-EffNetLite0 is a Frechet distance in EfficientNet-Lite0 features, not FID (frechet.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from t2i_drift.data.openmoji import OpenMojiDataset
from t2i_drift.data.photos import PHOTOS, PhotoCropsDataset
from t2i_drift.data.shapes import Scene, check_omit
from t2i_drift.eval.detail import detail_ratio
from t2i_drift.eval.diversity import diversity
from t2i_drift.eval.frechet import EffNetLite0Embedder, frechet_distance
from t2i_drift.eval.generation import (
    Generated,
    generate_images,
    is_multi_step,
    steps_kwargs,
    transformer_passes,
)
from t2i_drift.eval.retrieval import paired_retrieval_accuracy
from t2i_drift.eval.shapes import (
    SPLITS,
    group_accuracy,
    render_from_groups,
    render_scenes,
    split_caption_groups,
    spread_indices,
)
from t2i_drift.pipelines import TextToImagePipeline

DATA = ("openmoji", "shapes", "photos")
DEFAULT_PHOTOS_NUM = 32
PHOTOS_REFERENCE_CROPS = 64  # most reference crops (training split's seed) per subject
DEFAULT_OPENMOJI_NUM = 1000

METRIC_NOTES = {
    "fd": "FD-EffNetLite0: Frechet distance of pooled EfficientNet-Lite0 features (224 px); not FID",
    "retrieval": "paired retrieval: is a generated image's nearest real image (cosine, EfficientNet-Lite0 "
    "features) its own caption's? chance = k / num_train",
    "diversity": "mean pairwise distance between images of one prompt (within_prompt) or between first "
    "images of different prompts (between_prompts); pixel_rms: RMS difference in [-1, 1] units; "
    "effnet_l2: Euclidean distance of pooled EfficientNet-Lite0 features",
    "latency": "seconds per image around the pipeline calls (after one warm-up call) at batch_size",
    "subject": "photos: share of generated images whose nearest reference crop (cosine, EfficientNet-Lite0 "
    "features) shows their own subject",
    "detail": "photos: mean squared neighbouring-pixel difference of the generated images over the real "
    "crops', averaged over subjects (1: as detailed as real; near 0: blurs)",
    "shapes": "analytic checker accuracy (t2i_drift/data/shapes.py check_image); heldout scenes use "
    "colour-shape pairs never seen in training",
}


@dataclass(frozen=True)
class EvalSettings:
    """What every suite needs to know besides the pipeline.

    Attributes:
        seeds: images per caption, each with its own noise (shapes: all are scored; OpenMoji: FD and
            retrieval use one, diversity all). Per-prompt diversity needs >= 2.
        seed: base seed of the noise generators.
        guidance_scale: passed to every pipeline call.
        batch_size: prompts per pipeline call (latency is per image at this batch size).
        num: OpenMoji: training captions scored (default 1000); shapes: scenes per split (default all).
        num_val: OpenMoji: validation captions scored, spread over the split (default all 220).
        diversity_prompts: prompts whose images enter the diversity figures (spread over the scored ones).
        renders_per_caption: shapes: jittered real renders per caption for the real diversity.
        shapes_omit: shapes: attributes the captions leave out (the training recipe's
            ``data.shapes_omit``); each caption then describes several scenes.
    """

    seeds: int = 2
    seed: int = 0
    guidance_scale: float = 1.0
    batch_size: int = 64
    num: int | None = None
    num_val: int | None = None
    diversity_prompts: int = 100
    renders_per_caption: int = 4
    shapes_omit: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "shapes_omit", check_omit(self.shapes_omit))
        except ValueError as err:
            raise ValueError(f"shapes_omit: {err}") from None
        for name in ("seeds", "batch_size", "diversity_prompts", "renders_per_caption"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num", "num_val"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")

    def to_json(self) -> dict[str, Any]:
        """The settings as a saved evaluation stores them (tuples become lists), for comparing a
        saved evaluation's settings with these."""
        return json.loads(json.dumps(asdict(self)))


def _features(embedder: EffNetLite0Embedder, images: torch.Tensor, desc: str) -> np.ndarray:
    """[N, 3, H, W] -> float64 [N, 1280]."""
    return embedder.embed(images, desc=desc)


def _grouped_diversity(
    images: torch.Tensor, per_prompt: int, embedder: EffNetLite0Embedder, desc: str
) -> dict[str, Any]:
    """Diversity of [P * S, 3, H, W] prompt-major images (S = ``per_prompt``) in both spaces."""
    groups = images.reshape(-1, per_prompt, *images.shape[1:])  # [P, S, 3, H, W]
    features = torch.from_numpy(_features(embedder, images, desc)).reshape(*groups.shape[:2], -1)
    return diversity(groups, features)


def _timing(
    pipe: TextToImagePipeline, nfe: int, guidance_scale: float, runs: Sequence[Generated]
) -> dict[str, Any]:
    images = sum(len(r.images) for r in runs)
    seconds = sum(r.seconds for r in runs)
    return {
        "nfe": nfe,
        "transformer_passes_per_image": transformer_passes(pipe, nfe, guidance_scale),
        "images": images,
        "latency_s_per_image": seconds / images,
        "images_per_s": images / max(seconds, 1e-12),
    }


class OpenMojiSuite:
    """FD-EffNetLite0, paired retrieval, diversity and latency on the built-in OpenMoji captions."""

    data = "openmoji"

    def __init__(self, resolution: int, settings: EvalSettings, embedder: EffNetLite0Embedder):
        self.settings, self.embedder, self.resolution = settings, embedder, resolution
        train = OpenMojiDataset("train", resolution=resolution)
        val = OpenMojiDataset("validation", resolution=resolution)
        num = settings.num or min(DEFAULT_OPENMOJI_NUM, len(train))
        if not 2 <= num <= len(train):
            raise ValueError(f"num must be in [2, {len(train)}] (OpenMoji training captions), got {num}")
        idx = spread_indices(len(train), num)  # fixed and deterministic, covers the sorted list
        self.train_captions = [train.captions[i] for i in idx]
        val_idx = spread_indices(len(val), settings.num_val)
        self.val_captions = [val.captions[i] for i in val_idx]
        real_train = torch.stack([train[i]["pixel_values"] for i in idx])  # [N, 3, R, R]
        real_val = torch.stack([val[i]["pixel_values"] for i in val_idx])  # [M, 3, R, R]
        self.f_real_train = _features(embedder, real_train, "real train")
        self.f_real_val = _features(embedder, real_val, "real val")
        # diversity prompts: rows of the scored training captions
        self.div_rows = spread_indices(len(idx), settings.diversity_prompts)
        real_div = real_train[self.div_rows].unsqueeze(1)  # [D, 1, 3, R, R]: one image per caption
        f_div = torch.from_numpy(self.f_real_train[self.div_rows]).unsqueeze(1)  # [D, 1, 1280]
        self.reference = {
            "num_train": len(idx),
            "num_val": len(val_idx),
            "fd_real_train_val": frechet_distance(self.f_real_train, self.f_real_val),
            "retrieval_chance_top1": 1 / len(idx),
            "retrieval_chance_top5": min(5 / len(idx), 1.0),
            "diversity_prompts": len(self.div_rows),
            # OpenMoji has one image per caption: no real within-caption figure exists
            "diversity": diversity(real_div, f_div),
        }

    def evaluate(self, pipe: TextToImagePipeline, nfe: int) -> dict[str, Any]:
        """Scores of ``pipe`` sampled with ``nfe`` steps (see the module docstring)."""
        s = self.settings
        kwargs = {"guidance_scale": s.guidance_scale, **steps_kwargs(pipe, nfe)}
        gen_train = generate_images(pipe, self.train_captions, s.seed, s.batch_size, kwargs, desc="gen train")
        gen_val = generate_images(pipe, self.val_captions, s.seed + 1, s.batch_size, kwargs, warmup=False)
        runs = [gen_train, gen_val]
        f_gen_train = _features(self.embedder, gen_train.images, "gen train")
        f_gen_val = _features(self.embedder, gen_val.images, "gen val")
        retrieval = paired_retrieval_accuracy(f_gen_train, self.f_real_train, ks=(1, 5))
        if s.seeds >= 2:
            captions = [self.train_captions[r] for r in self.div_rows for _ in range(s.seeds)]
            gen_div = generate_images(pipe, captions, s.seed + 2, s.batch_size, kwargs, warmup=False)
            runs.append(gen_div)
            div = _grouped_diversity(gen_div.images, s.seeds, self.embedder, "gen diversity")
        else:
            images = gen_train.images[self.div_rows].unsqueeze(1)  # [D, 1, 3, R, R]
            div = diversity(images, torch.from_numpy(f_gen_train[self.div_rows]).unsqueeze(1))
        out = _timing(pipe, nfe, s.guidance_scale, runs)
        out.update(
            fd_gen_train=frechet_distance(f_gen_train, self.f_real_train),
            fd_gen_val=frechet_distance(f_gen_val, self.f_real_val),
            retrieval_top1=retrieval[1],
            retrieval_top5=retrieval[5],
            diversity=div,
        )
        return out


def _nearest_label_accuracy(
    features: np.ndarray, labels: np.ndarray, ref: np.ndarray, ref_labels: np.ndarray
) -> float:
    """Share of rows of ``features`` [N, F] whose nearest row of ``ref`` [M, F] (cosine) has their label."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True).clip(1e-12)
    return float((ref_labels[(f @ r.T).argmax(1)] == labels).mean())


class PhotosSuite:
    """FD-EffNetLite0, subject accuracy, detail and diversity on the photos set (data/photos.py)."""

    data = "photos"

    def __init__(self, resolution: int, settings: EvalSettings, embedder: EffNetLite0Embedder):
        self.settings, self.embedder, self.resolution = settings, embedder, resolution
        self.per_subject = settings.num or DEFAULT_PHOTOS_NUM
        self.captions = list(PHOTOS)
        P = len(self.captions)
        self.reference_crops = min(2 * self.per_subject, PHOTOS_REFERENCE_CROPS)
        train = PhotoCropsDataset("train", resolution, crops=self.reference_crops)
        val = PhotoCropsDataset("val", resolution, crops=self.per_subject)
        real_train = torch.stack([train[i]["pixel_values"] for i in range(len(train))])  # [P*T, 3, R, R]
        self.real_val = torch.stack([val[i]["pixel_values"] for i in range(len(val))])  # [P*S, 3, R, R]
        self.labels_train = np.repeat(np.arange(P), self.reference_crops)
        self.labels_val = np.repeat(np.arange(P), self.per_subject)
        self.f_real_train = _features(embedder, real_train, "real train")
        self.f_real_val = _features(embedder, self.real_val, "real val")
        # the floor: as many reference crops per subject as validation crops
        floor_rows = (
            np.arange(P)[:, None] * self.reference_crops
            + np.arange(min(self.per_subject, self.reference_crops))
        ).ravel()
        grouped = self.real_val.unflatten(0, (P, self.per_subject))  # [P, S, 3, R, R]
        self.reference = {
            "subjects": P,
            "images_per_subject": self.per_subject,
            "fd_real_train_val": frechet_distance(self.f_real_train[floor_rows], self.f_real_val),
            "subject_accuracy_real_val": _nearest_label_accuracy(
                self.f_real_val, self.labels_val, self.f_real_train, self.labels_train
            ),
            "subject_chance": 1 / P,
            "diversity": diversity(
                grouped, torch.from_numpy(self.f_real_val).reshape(P, self.per_subject, -1)
            ),
        }

    def evaluate(self, pipe: TextToImagePipeline, nfe: int) -> dict[str, Any]:
        """Scores of ``pipe`` sampled with ``nfe`` steps (see the module docstring)."""
        s = self.settings
        P, S = len(self.captions), self.per_subject
        kwargs = {"guidance_scale": s.guidance_scale, **steps_kwargs(pipe, nfe)}
        captions = [c for c in self.captions for _ in range(S)]
        gen = generate_images(pipe, captions, s.seed, s.batch_size, kwargs, desc="gen photos")
        f_gen = _features(self.embedder, gen.images, "gen photos")
        grouped = gen.images.unflatten(0, (P, S))  # [P, S, 3, R, R]
        out = _timing(pipe, nfe, s.guidance_scale, [gen])
        out.update(
            fd_gen_val=frechet_distance(f_gen, self.f_real_val),
            subject_accuracy=_nearest_label_accuracy(
                f_gen, self.labels_val, self.f_real_train, self.labels_train
            ),
            detail=detail_ratio(grouped, self.real_val.unflatten(0, (P, S))),
            diversity=diversity(grouped, torch.from_numpy(f_gen).reshape(P, S, -1)),
        )
        return out


class ShapesSuite:
    """Checker accuracy per attribute and split, diversity and latency on the built-in shapes set.

    With ``settings.shapes_omit`` the captions leave attributes out and each describes several
    scenes: an image counts as right when it matches any of them, and ``coverage`` reports how many
    of a caption's scenes its ``seeds`` images draw (t2i_drift/eval/shapes.py)."""

    data = "shapes"

    def __init__(
        self,
        resolution: int,
        settings: EvalSettings,
        embedder: EffNetLite0Embedder,
        splits: Sequence[str] = SPLITS,
    ):
        if not splits or any(split not in SPLITS for split in splits):
            raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {list(splits)}")
        self.settings, self.embedder, self.resolution = settings, embedder, resolution
        self.omit = check_omit(settings.shapes_omit)
        self.groups = {split: split_caption_groups(split, self.omit, settings.num) for split in splits}
        self.splits = list(splits)
        # diversity: captions spread over the first split, as rows of that split's caption list
        first = [scenes for _, scenes in self.groups[self.splits[0]]]
        self.div_rows = spread_indices(len(first), settings.diversity_prompts)
        renders = settings.renders_per_caption
        real_div = self._real([first[r] for r in self.div_rows], renders, seed=1)
        real_diversity = (
            _grouped_diversity(real_div, renders, embedder, "real diversity")
            if renders >= 2
            else diversity(real_div.unsqueeze(1))
        )
        # the checker's ceiling: one render per caption, or with omitted attributes as many as
        # the generator gets (seeds), so that the real coverage is comparable
        per_caption = settings.seeds if self.omit else 1
        real_renders = {}
        for split, groups in self.groups.items():
            scenes = [g for _, g in groups]
            images = self._real(scenes, per_caption, seed=0)
            real_renders[split] = group_accuracy(images, [g for g in scenes for _ in range(per_caption)])
        self.reference = {
            "scenes": {split: sum(len(g) for _, g in groups) for split, groups in self.groups.items()},
            "captions": {split: len(groups) for split, groups in self.groups.items()},
            "shapes_omit": list(self.omit),
            "real_renders": real_renders,
            "real_renders_per_caption": per_caption,
            "diversity_split": self.splits[0],
            "diversity_prompts": len(self.div_rows),
            "renders_per_caption": renders,
            "diversity": real_diversity,
        }

    def _real(self, groups: Sequence[Sequence[Scene]], per_caption: int, seed: int) -> torch.Tensor:
        """[len(groups) * per_caption, 3, R, R] real images, caption-major: jittered renders of the
        caption's one scene, or of scenes drawn from its group when attributes are omitted."""
        if self.omit:
            return render_from_groups(groups, self.resolution, per_caption, seed=seed)
        return render_scenes([g[0] for g in groups], self.resolution, per_caption, seed=seed)

    def evaluate(self, pipe: TextToImagePipeline, nfe: int) -> dict[str, Any]:
        """Scores of ``pipe`` sampled with ``nfe`` steps (see the module docstring)."""
        s = self.settings
        kwargs = {"guidance_scale": s.guidance_scale, **steps_kwargs(pipe, nfe)}
        accuracy, runs, div_images = {}, [], None
        for k, (split, groups) in enumerate(self.groups.items()):
            repeated = [(caption, g) for caption, g in groups for _ in range(s.seeds)]  # caption-major
            gen = generate_images(
                pipe,
                [caption for caption, _ in repeated],
                s.seed + k,
                s.batch_size,
                kwargs,
                warmup=k == 0,
                desc=f"gen {split}",
            )
            runs.append(gen)
            accuracy[split] = group_accuracy(gen.images, [g for _, g in repeated])
            if k == 0:
                per = gen.images.reshape(len(groups), s.seeds, *gen.images.shape[1:])  # [n, S, 3, R, R]
                div_images = per[self.div_rows].flatten(0, 1)  # [D * S, 3, R, R]
        out = _timing(pipe, nfe, s.guidance_scale, runs)
        out.update(accuracy)
        out["diversity"] = _grouped_diversity(div_images, s.seeds, self.embedder, "gen diversity")
        return out


Suite = OpenMojiSuite | ShapesSuite | PhotosSuite


def make_suite(
    data: str,
    resolution: int,
    settings: EvalSettings,
    embedder: EffNetLite0Embedder | None = None,
    splits: Sequence[str] = SPLITS,
) -> Suite:
    """The suite of ``data`` (``openmoji``, ``shapes`` or ``photos``) at ``resolution`` px; builds the real
    reference now (a few seconds to a minute on a CPU). ``splits``: shapes only."""
    embedder = embedder or EffNetLite0Embedder()
    if data == "openmoji":
        return OpenMojiSuite(resolution, settings, embedder)
    if data == "shapes":
        return ShapesSuite(resolution, settings, embedder, splits)
    if data == "photos":
        return PhotosSuite(resolution, settings, embedder)
    raise ValueError(f"data must be one of {DATA}, got {data!r}")


def evaluate_pipeline(
    pipe: TextToImagePipeline,
    suite: Suite,
    nfes: Sequence[int],
    model: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``pipe`` with ``suite`` at each number of sampling steps in ``nfes``.

    Returns:
        JSON-ready ``{"model", "pipeline", "multi_step", "data", "device", "settings", "metrics",
        "reference", "runs": [one dict per NFE]}``.
    """
    runs = []
    for nfe in nfes:
        result = suite.evaluate(pipe, nfe)
        if progress:
            print(f"  {suite.data} NFE {nfe}: {headline(suite.data, result)}", flush=True)
        runs.append(result)
    return {
        "model": model,
        "pipeline": type(pipe).__name__,
        "multi_step": is_multi_step(pipe),
        "data": suite.data,
        "resolution": suite.resolution,
        "device": str(pipe.device),
        "settings": asdict(suite.settings),
        "metrics": METRIC_NOTES,
        "reference": suite.reference,
        "runs": runs,
    }


def headline(data: str, result: dict[str, Any]) -> str:
    """One line with the main figures of one NFE's result."""
    within = (result.get("diversity") or {}).get("within_prompt") or {}
    div = f"diversity {within['pixel_rms']:.4f}" if within else "diversity n/a"
    latency = f"{1000 * result['latency_s_per_image']:.2f} ms/image"
    if data == "openmoji":
        return (
            f"FD-EffNetLite0 train {result['fd_gen_train']:.1f} val {result['fd_gen_val']:.1f}, "
            f"retrieval top-1 {result['retrieval_top1']:.3f}, {div}, {latency}"
        )
    if data == "photos":
        return (
            f"FD-EffNetLite0 val {result['fd_gen_val']:.1f}, subject {result['subject_accuracy']:.3f}, "
            f"detail {result['detail']:.2f}, {div}, {latency}"
        )
    splits = [s for s in SPLITS if s in result]
    acc = ", ".join(f"{s} all-attributes {result[s]['all_attributes']:.3f}" for s in splits)
    return f"{acc}, {div}, {latency}"
