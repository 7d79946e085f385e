"""Feature sets of docs/method.md section 4: turn feature maps into keyed groups of vectors.

Every function returns ``[images, L, D]``: for each image, L feature locations (each location is
its own group in the loss) of dimension D. Each returned entry is its own feature key with its own
normalization (section 3). Official sets, per encoder feature map of shape [images, C, H, W]:

    (a) per-location vectors        L = H*W,            D = C
    (b) global mean, global std     L = 1,              D = C   (two keys)
    (c) 2x2-patch mean and std      L = (H/2)*(W/2),    D = C   (two keys)
    (d) 4x4-patch mean and std      L = (H/4)*(W/4),    D = C   (two keys)

plus the per-channel RMS of the encoder input and the flattened raw generator output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F

# Which keys share the field normalization lambda_tau (docs/method.md section 3).
FieldNormScope = Literal["key", "map", "encoder"]
FIELD_NORM_SCOPES: tuple[str, ...] = get_args(FieldNormScope)

# Keeps sqrt differentiable where a patch is constant (std = 0).
_STD_EPS = 1e-6


def per_location(fmap: torch.Tensor) -> torch.Tensor:
    """(a) [images, C, H, W] -> [images, H*W, C]."""
    return fmap.flatten(2).transpose(1, 2)


def global_mean_std(fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b) [images, C, H, W] -> mean [images, 1, C], std [images, 1, C] over H, W."""
    mean = fmap.mean(dim=(2, 3))
    var = (fmap.square().mean(dim=(2, 3)) - mean.square()).clamp_min(0.0)
    return mean.unsqueeze(1), (var + _STD_EPS).sqrt().unsqueeze(1)


def patch_mean_std(fmap: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(c)/(d) mean and std over non-overlapping patch x patch windows.

    [images, C, H, W] -> two [images, (H//patch)*(W//patch), C]; trailing rows/columns that do not
    fill a window are dropped (as average pooling does).
    """
    mean = F.avg_pool2d(fmap, patch)
    var = (F.avg_pool2d(fmap.square(), patch) - mean.square()).clamp_min(0.0)
    return per_location(mean), per_location((var + _STD_EPS).sqrt())


def input_rms(x: torch.Tensor) -> torch.Tensor:
    """Per-channel RMS of the encoder input: [images, C, H, W] -> [images, 1, C]."""
    return x.square().mean(dim=(2, 3)).add(_STD_EPS).sqrt().unsqueeze(1)


def flattened(x: torch.Tensor) -> torch.Tensor:
    """The raw output as one vector: [images, C, H, W] -> [images, 1, C*H*W]."""
    return x.flatten(1).unsqueeze(1)


def map_feature_sets(
    fmap: torch.Tensor,
    name: str,
    patch_sizes: Sequence[int] = (2, 4),
    include_per_location: bool = True,
    include_global: bool = True,
    keep_single_cell: bool = False,
) -> dict[str, torch.Tensor]:
    """All official sets of one feature map, keyed ``<name>/<set>``.

    A patch size whose pooled map would be a single cell (e.g. 4x4 patches of a 4x4 map) gives
    the global mean/std again, so by default it is skipped; ``keep_single_cell`` keeps it as its
    own key, as the official release does on its deepest MAE maps (its "1x1" sets): values equal
    to set (b) up to rounding, L = 1, but a separate term of the loss with its own normalization,
    so the global statistics of those maps count twice. A patch size larger than the map gives no
    cell and is always skipped.

    Args:
        fmap: [images, C, H, W] feature map.
        name: key prefix, e.g. ``"effnet.b3"``.
        keep_single_cell: keep patch sets whose pooled map is 1x1 (see above).
    Returns:
        dict key -> [images, L, D].
    """
    out: dict[str, torch.Tensor] = {}
    if include_per_location:
        out[f"{name}/loc"] = per_location(fmap)
    if include_global:
        out[f"{name}/mean"], out[f"{name}/std"] = global_mean_std(fmap)
    _, _, H, W = fmap.shape
    fewest_cells = 1 if keep_single_cell else 2
    for patch in patch_sizes:
        if H // patch * (W // patch) < fewest_cells:
            continue
        out[f"{name}/mean{patch}x{patch}"], out[f"{name}/std{patch}x{patch}"] = patch_mean_std(fmap, patch)
    return out


def lambda_groups(keys: Iterable[str], scope: FieldNormScope) -> dict[str, str] | None:
    """Labels of the keys that share one field normalization, for ``evaluate_drift(lambda_groups=)``.

    Keys are named ``<encoder>[.<map>]/<set>`` (``mae.s2.out/loc``, ``mae/input_rms``,
    ``raw/flat``). ``key``: None, every key its own lambda (the method). ``map``: the sets of one
    feature map share one (label ``mae.s2.out``). ``encoder``: every key of one encoder shares one
    (label ``mae``).
    """
    if scope not in FIELD_NORM_SCOPES:
        raise ValueError(
            f"field normalization scope must be one of {', '.join(FIELD_NORM_SCOPES)}, got {scope!r}"
        )
    if scope == "key":
        return None
    labels = {}
    for key in keys:
        owner = key.split("/", 1)[0]
        labels[key] = owner if scope == "map" else owner.split(".", 1)[0]
    return labels
