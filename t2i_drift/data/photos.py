"""Crops of the sample photographs that ship inside scikit-image: a small offline set of textured
natural images (brick, grass, gravel, the moon, a cat, galaxies, ...), captioned by subject.

Why: the built-in captioned sets (OpenMoji, shapes) are flat-coloured drawings, on which raw pixel
distances rank images well. The paper needed a feature encoder for textured natural images, whose
raw distances concentrate; these crops are the closest such images available offline: a training
set (``data.name: photos``), an evaluation suite (eval/suites.py) and probes of the drifting field
(scripts/bench_mode_seeking.py ``--data photos``). Each subject gives many different crops, so a
caption has many images, as a class does in the paper.

Images: scikit-image's ``skimage.data`` (see its documentation for each photograph's source and
license), grey ones repeated over three channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from t2i_drift.data.rendered import RenderedImageCaptionDataset

# caption -> skimage.data function; the photographs (not the synthetic test images) that ship
# inside the package, so nothing downloads.
PHOTOS: dict[str, str] = {
    "brick wall": "brick",
    "grass": "grass",
    "gravel": "gravel",
    "moon surface": "moon",
    "coins": "coins",
    "cells under a microscope": "cell",
    "photographer with a camera": "camera",
    "astronaut": "astronaut",
    "cat": "chelsea",
    "cup of coffee": "coffee",
    "galaxies": "hubble_deep_field",
    "stained tissue": "immunohistochemistry",
    "rocket": "rocket",
    "retina": "retina",
}


def load_photo(name: str) -> torch.Tensor:
    """The photograph ``skimage.data.<name>()`` as [3, H, W] in [-1, 1] (grey repeated)."""
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError("the photos set needs scikit-image: pip install 't2i_drift[data]'") from err
    array = getattr(skimage.data, name)()
    image = torch.from_numpy(array).float() / 127.5 - 1.0
    if image.dim() == 2:
        image = image[None].expand(3, -1, -1)
    else:
        image = image[..., :3].permute(2, 0, 1)
    return image.contiguous()


def photo_crops(
    captions: list[str], crops: int, resolution: int = 32, crop_fraction: float = 0.25, seed: int = 0
) -> torch.Tensor:
    """``crops`` random square crops of each caption's photograph, each ``crop_fraction`` of the
    photograph's shorter side, resized (area) to ``resolution``: [len(captions), crops, 3, R, R]
    in [-1, 1]. Deterministic in ``seed``."""
    unknown = [c for c in captions if c not in PHOTOS]
    if unknown:
        raise ValueError(f"unknown photo captions {unknown}; the set has {list(PHOTOS)}")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    g = torch.Generator().manual_seed(seed)
    out = []
    for caption in captions:
        photo = load_photo(PHOTOS[caption])
        H, W = photo.shape[-2:]
        side = max(resolution, int(crop_fraction * min(H, W)))
        tops = torch.randint(0, H - side + 1, (crops,), generator=g)
        lefts = torch.randint(0, W - side + 1, (crops,), generator=g)
        patches = torch.stack(
            [photo[:, t : t + side, s : s + side] for t, s in zip(tops, lefts, strict=True)]
        )
        out.append(F.interpolate(patches, size=(resolution, resolution), mode="area"))
    return torch.stack(out)


class PhotoCropsDataset(RenderedImageCaptionDataset):
    """The photos set as training data: ``crops`` crops per subject, captioned by subject, in the
    shared in-memory form (data/rendered.py). ``data.name: photos``.

    The validation split draws other crops (another seed) of the same photographs: it holds out
    crops, not subjects, so it measures how a generator covers each subject's crops rather than
    whether it generalizes to new captions.

    Args:
        split: ``train`` (seed 0) or ``val`` (seed 1).
        resolution: side of the crops.
        crops: crops per subject (default 256 for train, 32 for val).
        max_samples: keep the first N items (subject-major order) when set.
    """

    def __init__(
        self,
        split: str = "train",
        resolution: int = 32,
        crops: int | None = None,
        max_samples: int | None = None,
    ):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        crops = crops if crops is not None else (256 if split == "train" else 32)
        captions = list(PHOTOS)
        pixels = photo_crops(captions, crops, resolution, seed=0 if split == "train" else 1)
        images = ((pixels.flatten(0, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        self.images = images.permute(0, 2, 3, 1).contiguous()  # [N, R, R, 3]
        self.captions = [c for c in captions for _ in range(crops)]
        if max_samples is not None:
            self.images, self.captions = self.images[:max_samples], self.captions[:max_samples]
