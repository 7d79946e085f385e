"""ResNetMAE: the paper's feature encoder, a convolutional masked autoencoder (docs/method.md section 4).

A ResNet of basic blocks (GroupNorm, stage widths C, 2C, 4C, 8C, stage strides 1, 2, 2, 2) reads
an input in which half of the 2x2 patches are replaced by a learned mask token, and a light decoder
predicts the input; the loss counts only the masked cells. After training, the encoder runs on the
*unmasked* input and its feature maps (every 2 blocks of each stage and each stage output) feed
the drifting loss as a frozen feature encoder (``t2i_drift.models.feature_encoders.MAEFeatures``).

One class serves both input spaces:
    pixels        in_channels=3, ``stem_patch_size`` 2 (32 px -> a 16x16 stem grid)
    VAE latents   in_channels=latent channels, ``stem_patch_size`` 1 (the paper's setting)

Masking works on the stem grid: a masked patch is ``mask_patch_size`` x ``mask_patch_size`` stem
cells, i.e. ``mask_patch_size * stem_patch_size`` input cells a side. On latents (stem 1) this is
the paper's 2x2 latent patches; on pixels it keeps every stem cell either fully visible or fully
masked, so no stem token sees a half-masked input.

Shapes: N = batch, C_in = input channels, H x W = input size, s = stem_patch_size,
m = mask_patch_size, C = width, D = decoder width, K = num_classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

# Name of the stem output among the feature maps (the official release's ``conv1`` map).
STEM_MAP = "stem"


@dataclass
class MAEOutput(BaseOutput):
    """Output of :meth:`ResNetMAE.forward`.

    Args:
        loss: scalar masked-reconstruction MSE (masked cells only).
        reconstruction: [N, C_in, H, W] the decoder's prediction of the whole input.
        mask: [N, 1, H, W] float, 1 where the input was masked.
        logits: [N, K] class logits of the unmasked input (``classify=True`` only).

    Every field defaults to None, as in diffusers' own outputs: Accelerate's mixed-precision
    wrapper rebuilds an output from a dict of its fields (``type(out)({...})``), which BaseOutput
    accepts only then.
    """

    loss: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked cells only (the MAE objective).

    Args:
        prediction, target: [N, C, H, W].
        mask: [N, 1, H, W], 1 = masked (counted), 0 = visible (ignored).
    Returns:
        scalar: sum over masked cells and channels of the squared error / (masked cells * C).
    """
    err = (prediction.float() - target.float()).square() * mask  # [N, C, H, W], zero where visible
    return err.sum() / (mask.sum() * prediction.shape[1]).clamp_min(1.0)


# ----------------------------------------------------------------------------------------------
#                                          Layers
# ----------------------------------------------------------------------------------------------


def group_norm(channels: int, num_groups: int, eps: float) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: the frozen encoder then behaves the same on one image as on a
    # batch, and masked and unmasked batches share no running statistics.
    return nn.GroupNorm(num_groups, channels, eps=eps)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-GN-ReLU-conv3x3-GN plus a shortcut (1x1 conv + GN when the
    width or stride changes), then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, num_groups: int, eps: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(out_ch, num_groups, eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_ch, num_groups, eps)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), group_norm(out_ch, num_groups, eps)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C_i, h, w] -> [N, C_o, h/stride, w/stride]."""
        h = F.relu(self.norm1(self.conv1(x)))  # [N, C_o, h', w']
        h = self.norm2(self.conv2(h))  # [N, C_o, h', w']
        return F.relu(h + self.shortcut(x))


# ----------------------------------------------------------------------------------------------
#                                         The model
# ----------------------------------------------------------------------------------------------


class ResNetMAE(ModelMixin, ConfigMixin):
    """Convolutional masked autoencoder; the whole architecture is in ``config.json``.

    Args:
        in_channels: C_in, 3 for pixels or the VAE's latent channels.
        sample_size: side of the training input (pixels or latent cells). Not needed by the
            convolutions; feature encoders resize inputs of another size to it.
        width: C, the width of stage 1; stage i has width C * 2**(i-1).
        depths: basic blocks per stage (paper: [3, 4, 6, 3]).
        stem_patch_size: s, kernel = stride of the patchify stem (pixels 2, latents 1).
        mask_patch_size: m, side of a masked square in stem cells.
        mask_ratio: share of the m x m patches masked in each image (exactly, rounded).
        norm_num_groups: GroupNorm groups (must divide ``width`` and ``decoder_width``).
        decoder_width: D, the decoder's common width (None: ``width``).
        num_classes: K > 0 adds a classification head (global pool of the last stage + linear)
            for the fine-tune phase; 0 has none.
        norm_eps: GroupNorm epsilon.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        sample_size: int = 32,
        width: int = 64,
        depths: tuple[int, ...] = (3, 4, 6, 3),
        stem_patch_size: int = 2,
        mask_patch_size: int = 2,
        mask_ratio: float = 0.5,
        norm_num_groups: int = 32,
        decoder_width: int | None = None,
        num_classes: int = 0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        depths = tuple(depths)
        D = decoder_width or width
        if not depths or min(depths) < 1:
            raise ValueError(f"depths must be a non-empty list of positive block counts, got {list(depths)}")
        if width % norm_num_groups or D % norm_num_groups:
            raise ValueError(
                f"norm_num_groups={norm_num_groups} must divide width={width} and decoder_width={D}"
            )
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if stem_patch_size < 1 or mask_patch_size < 1:
            raise ValueError(
                f"stem_patch_size={stem_patch_size} and mask_patch_size={mask_patch_size} must be >= 1"
            )
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        widths = [width * 2**i for i in range(len(depths))]

        # Encoder: patchify stem, then stages of basic blocks (stride 2 in the first block of
        # every stage but the first).
        self.mask_token = nn.Parameter(torch.zeros(in_channels))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, stem_patch_size, stride=stem_patch_size, bias=False),
            group_norm(width, norm_num_groups, norm_eps),
            nn.ReLU(),
        )
        self.stages = nn.ModuleList()
        in_ch = width
        for i, (depth, out_ch) in enumerate(zip(depths, widths, strict=True)):
            blocks = [
                BasicBlock(
                    in_ch if b == 0 else out_ch,
                    out_ch,
                    2 if (b == 0 and i > 0) else 1,
                    norm_num_groups,
                    norm_eps,
                )
                for b in range(depth)
            ]
            self.stages.append(nn.ModuleList(blocks))
            in_ch = out_ch

        # Decoder (light, FPN-like): every stage output -> 1x1 conv to D, upsampled to the stem
        # grid and summed; two convs; a 1x1 conv to s*s*C_in values per stem cell, pixel-shuffled
        # back to the input resolution.
        self.lateral = nn.ModuleList([nn.Conv2d(w, D, 1) for w in widths])
        self.decoder = nn.Sequential(
            group_norm(D, norm_num_groups, norm_eps),
            nn.ReLU(),
            nn.Conv2d(D, D, 3, padding=1),
            group_norm(D, norm_num_groups, norm_eps),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(D, in_channels * stem_patch_size**2, 1)

        self.classifier = nn.Linear(widths[-1], num_classes) if num_classes > 0 else None
        self._init_weights()

    def _init_weights(self) -> None:
        """He init for convs; GroupNorm to identity except the last norm of every residual
        branch, which starts at zero so each block starts as its shortcut (a shallow, easy
        network early on); zero decoder head (the first prediction is 0 everywhere); a small
        classifier; a zero mask token (learned)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for stage in self.stages:
            for block in stage:
                nn.init.zeros_(block.norm2.weight)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.01)
            nn.init.zeros_(self.classifier.bias)
        nn.init.zeros_(self.mask_token)

    # ------------------------------------------------------------------------------------------
    #                                     masking
    # ------------------------------------------------------------------------------------------

    def random_mask(
        self,
        batch_size: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Exactly ``round(mask_ratio * patches)`` aligned patches per image, chosen uniformly.

        Returns:
            [N, 1, H, W] float mask at input resolution, 1 = masked.
        """
        cell = self.config.mask_patch_size * self.config.stem_patch_size  # input cells per patch side
        if height % cell or width % cell:
            raise ValueError(
                f"input {height}x{width} is not divisible by mask_patch_size * stem_patch_size = {cell}"
            )
        gh, gw = height // cell, width // cell
        n_masked = round(self.config.mask_ratio * gh * gw)
        gen_device = generator.device if generator is not None else (device or self.device)
        # MAE-style: rank uniform noise per image; the n_masked lowest ranks are masked.
        noise = torch.rand(batch_size, gh * gw, generator=generator, device=gen_device)  # [N, P]
        ranks = noise.argsort(dim=1).argsort(dim=1)  # [N, P], a random permutation of 0..P-1
        mask = (ranks < n_masked).float().view(batch_size, 1, gh, gw)  # [N, 1, gh, gw]
        mask = mask.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)  # [N, 1, H, W]
        return mask.to(device or self.device)

    # ------------------------------------------------------------------------------------------
    #                                     encoder
    # ------------------------------------------------------------------------------------------

    @property
    def feature_map_names(self) -> list[str]:
        """Names of :meth:`feature_maps`, shallow to deep: ``s<i>.b<j>`` after every 2nd block of
        stage i (1-based) and ``s<i>.out`` for its output (a stage of 4 blocks gives b2, out).
        The stem output ``stem`` (:data:`STEM_MAP`) can be asked for too but is not part of this
        default list (the paper's maps)."""
        names = []
        for i, depth in enumerate(self.config.depths, start=1):
            names += [f"s{i}.b{j}" for j in range(2, depth, 2)]
            names.append(f"s{i}.out")
        return names

    def _encode(self, x: torch.Tensor, keep: set[str] | None = None) -> dict[str, torch.Tensor]:
        """Run the encoder on x [N, C_in, H, W]; return the named maps in ``keep`` (None: every
        stage output ``s<i>.out`` only), stopping after the deepest one needed."""
        wanted = {f"s{i}.out" for i in range(1, len(self.stages) + 1)} if keep is None else keep
        # The stem counts as stage 0: asking for it alone runs no stage.
        last = max(0 if name == STEM_MAP else int(name[1 : name.index(".")]) for name in wanted)
        maps: dict[str, torch.Tensor] = {}
        h = self.stem(x.to(self.dtype))  # [N, C, H/s, W/s]
        if STEM_MAP in wanted:
            maps[STEM_MAP] = h
        for i, stage in enumerate(self.stages[:last], start=1):
            for j, block in enumerate(stage, start=1):
                h = block(h)  # [N, C*2^(i-1), H/s/2^(i-1), W/s/2^(i-1)]
                name = f"s{i}.out" if j == len(stage) else f"s{i}.b{j}"
                if name in wanted:
                    maps[name] = h
        return maps

    def feature_maps(self, x: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The paper's feature maps of the *unmasked* input.

        Args:
            x: [N, C_in, H, W].
            names: a subset of :attr:`feature_map_names` and ``stem`` (None: the former, all).
        Returns:
            dict name -> [N, C_i, h_i, w_i], shallow to deep (``stem`` [N, C, H/s, W/s] first).
        """
        valid = [STEM_MAP, *self.feature_map_names]
        names = self.feature_map_names if names is None else list(names)
        unknown = [n for n in names if n not in valid]
        if unknown or not names:
            raise ValueError(f"unknown feature maps {unknown or names}; this model has {valid}")
        maps = self._encode(x, set(names))
        return {n: maps[n] for n in valid if n in maps}

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the encoder reads it: space-to-depth by s = ``stem_patch_size``.

        The patchify stem (kernel = stride = s) is a linear map of the s*s*C_in values of each
        stem cell, i.e. a 1x1 conv of this tensor; the official pixel MAE's explicit
        space-to-depth by 8 is the same step. x [N, C_in, H, W] -> [N, C_in*s*s, H/s, W/s]
        (channel c*s*s + i*s + j holds x[:, c, i::s, j::s]); s = 1 returns x itself.
        """
        s = self.config.stem_patch_size
        return F.pixel_unshuffle(x, s) if s > 1 else x

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of the unmasked input: x [N, C_in, H, W] -> [N, K]."""
        if self.classifier is None:
            raise ValueError("this ResNetMAE has no classification head (num_classes=0)")
        last = f"s{len(self.stages)}.out"
        h = self._encode(x, {last})[last]  # [N, 8C, h, w]
        return self.classifier(h.mean(dim=(2, 3)))  # [N, K]

    # ------------------------------------------------------------------------------------------
    #                                     forward
    # ------------------------------------------------------------------------------------------

    def forward(
        self,
        sample: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        classify: bool = False,
        return_dict: bool = True,
        input_noise: torch.Tensor | None = None,
    ) -> MAEOutput | tuple:
        """Mask, encode, decode; the loss counts masked cells only (:func:`masked_mse`).

        Args:
            sample: [N, C_in, H, W] clean input (pixels in [-1, 1], or scaled latents).
            mask: [N, 1, H, W], 1 = masked; None draws :meth:`random_mask` with ``generator``.
            generator: the RNG of the mask draw.
            classify: also return logits of the unmasked sample (fine-tune phase; one more
                encoder pass). Part of ``forward`` so DDP sees every parameter it trains.
            input_noise: [N, C_in, H, W] added to the encoder's input only; the reconstruction
                target stays ``sample`` (a denoising MAE).
        Returns:
            :class:`MAEOutput` (loss, reconstruction, mask, logits) or the same as a tuple.
        """
        N, C_in, H, W = sample.shape
        s = self.config.stem_patch_size
        if C_in != self.config.in_channels:
            raise ValueError(f"input has {C_in} channels, the model expects {self.config.in_channels}")
        if mask is None:
            mask = self.random_mask(N, H, W, generator=generator, device=sample.device)  # [N, 1, H, W]
        # A learned per-channel token, not zeros: 0 is mid-grey in pixel space (the shapes
        # background) and the mean in latent space, so zeros would look like real content.
        token = self.mask_token.to(sample.dtype).view(1, C_in, 1, 1)
        corrupted = sample if input_noise is None else sample + input_noise
        x = corrupted * (1 - mask) + token * mask  # [N, C_in, H, W]

        stage_outs = list(self._encode(x).values())  # [N, C*2^i, H/s/2^i, W/s/2^i] per stage
        grid = stage_outs[0].shape[-2:]  # (H/s, W/s)
        h = sum(
            F.interpolate(lat(o), size=grid, mode="bilinear", align_corners=False)
            if o.shape[-2:] != grid
            else lat(o)
            for lat, o in zip(self.lateral, stage_outs, strict=True)
        )  # [N, D, H/s, W/s]
        h = self.head(self.decoder(h))  # [N, s*s*C_in, H/s, W/s]
        reconstruction = F.pixel_shuffle(h, s) if s > 1 else h  # [N, C_in, H, W]
        loss = masked_mse(reconstruction, sample, mask)
        logits = self.classify(sample) if classify else None  # [N, K]
        if not return_dict:
            return (loss, reconstruction, mask, logits)
        return MAEOutput(loss=loss, reconstruction=reconstruction, mask=mask, logits=logits)
