"""Text-to-image grouping of the drifting loss (docs/method.md section 7): group = prompt x location.

For B prompts with G generated samples each (G is always samples per prompt in this project), a
feature key with L locations per image gives B*L groups of n = G generated samples. Group (b, l)
holds
    gen: the G samples of prompt b at location l                      [G, D]
    pos: the paired real image of prompt b at location l, then its
         P - 1 extra positives (same caption, or augmented views)    [P, D]
    neg: the real images of all B prompts at location l (the unconditional set of section 5),
         masked where the caption equals prompt b's (paper footnote: exclude c), weighted w_cfg.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch

from t2i_drift.drifting.groups import DriftGroups
from t2i_drift.drifting.guidance import guidance_weight
from t2i_drift.drifting.loss import drifting_loss
from t2i_drift.drifting.options import DriftOptions

__all__ = ["group_by_prompt", "text_to_image_drift_loss", "uncond_mask"]


def group_by_prompt(
    gen: torch.Tensor, real: torch.Tensor, samples_per_prompt: int, extra: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Arrange one key's features into groups.

    Args:
        gen: [B*G, L, D] features of the generated images, prompt-major (the G samples of prompt
            b are rows b*G .. b*G+G-1).
        real: [B, L, D] features of the paired real images.
        samples_per_prompt: G.
        extra: [B, P-1, L, D] features of each prompt's extra positives, or None (P = 1).
    Returns:
        gen_groups [B*L, G, D], pos_groups [B*L, P, D], the negative bank [L, B, D] (all B real
        images at each location, a view of ``real``) and neg_index [B*L] (group b*L + l uses bank
        row l). The bank is shared, so the [B*L, B, D] per-group copy is never built whole: the
        field gathers it chunk by chunk.
    """
    BG, L, D = gen.shape
    B = real.shape[0]
    if BG != B * samples_per_prompt:
        raise ValueError(
            f"{BG} generated rows do not match {B} prompts x {samples_per_prompt} samples per prompt"
        )
    gen_groups = gen.view(B, samples_per_prompt, L, D).transpose(1, 2).reshape(B * L, samples_per_prompt, D)
    if extra is None:
        pos_groups = real.reshape(B * L, 1, D)
    else:
        if extra.dim() != 4 or extra.shape[0] != B or extra.shape[2:] != real.shape[1:]:
            raise ValueError(
                f"extra positives must be [B, P-1, L, D] = [{B}, P-1, {L}, {D}], got {tuple(extra.shape)}"
            )
        positives = torch.cat([real.unsqueeze(1), extra.to(real.dtype)], dim=1)  # [B, P, L, D]
        pos_groups = positives.transpose(1, 2).reshape(B * L, -1, D)
    neg_bank = real.transpose(0, 1)  # [L, B, D]
    neg_index = torch.arange(L, device=real.device).repeat(B)  # [B*L]: l for group b*L + l
    return gen_groups, pos_groups, neg_bank, neg_index


def uncond_mask(caption_ids: torch.Tensor) -> torch.Tensor:
    """[B] ids of the prompts' captions -> [B, B] bool, True where prompt b may use image b' as an
    unconditional negative (different caption; the paired image itself is always excluded)."""
    return caption_ids.view(-1, 1) != caption_ids.view(1, -1)


def text_to_image_drift_loss(
    gen_features: Mapping[str, torch.Tensor],
    real_features: Mapping[str, torch.Tensor],
    samples_per_prompt: int,
    alpha: torch.Tensor,
    caption_ids: torch.Tensor,
    options: DriftOptions,
    *,
    key_weights: Mapping[str, float] | None = None,
    extra_positives: Mapping[str, torch.Tensor] | None = None,
    lambda_groups: Mapping[str, str] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over feature keys of the normalized drifting loss (docs/method.md sections 3, 5, 7).

    Args:
        gen_features: key -> [B*G, L, D] generated features (with grad), prompt-major.
        real_features: key -> [B, L, D] features of the paired real images (no grad needed).
        samples_per_prompt: G (>= 2; 1 with ``options.mask_self`` False: each sample is then its
            only negative, besides the unconditional ones).
        alpha: [B] guidance scale per prompt.
        caption_ids: [B] integer id per caption; equal ids mark identical captions.
        options: temperatures, pooling over processes, memory budget, ...; ``normalize`` is
            forced to True (text-to-image training always uses the section-3 normalization).
        key_weights: optional weight per key (default 1: the method's plain sum over keys). The
            normalization of each key is unchanged; the weight only scales its loss term.
        extra_positives: key -> [B, P-1, L, D] features of more positives per prompt (images of
            the same caption, or views of the paired one); None: the paired image alone. The
            unconditional negatives stay the B paired images.
        lambda_groups: keys that share one field normalization per temperature (key -> label,
            e.g. every key of one feature encoder); None: one per key (the method).
    Returns:
        loss (scalar) and stats ``<key>/<stat>`` plus ``loss/<key>`` (0-d tensors; no device sync),
        as :func:`~t2i_drift.drifting.loss.drifting_loss` returns them.
    """
    if samples_per_prompt < 2 and (samples_per_prompt < 1 or options.mask_self):
        raise ValueError(
            f"samples_per_prompt must be >= 2 (drift needs negatives; 1 only with mask_self=False, where "
            f"a sample is its own negative), got {samples_per_prompt}"
        )
    if set(gen_features) != set(real_features):
        raise ValueError(
            f"generated and real feature keys differ: {sorted(set(gen_features) ^ set(real_features))}"
        )
    valid = uncond_mask(caption_ids.to(alpha.device))  # [B, B]
    w_cfg = guidance_weight(alpha, samples_per_prompt, valid.sum(1))  # [B]
    keys: dict[str, DriftGroups] = {}
    for key in gen_features:
        extra = None if extra_positives is None else extra_positives[key]
        gen, pos, bank, index = group_by_prompt(
            gen_features[key], real_features[key], samples_per_prompt, extra
        )
        L = real_features[key].shape[1]
        keys[key] = DriftGroups(
            gen,
            pos,
            bank,
            neg_weights=w_cfg.repeat_interleave(L).unsqueeze(1),  # [B*L, 1] -> broadcast to [B*L, B]
            neg_mask=valid.repeat_interleave(L, dim=0),  # [B*L, B]
            neg_index=index,
        )
    return drifting_loss(
        keys, replace(options, normalize=True), key_weights=key_weights, lambda_groups=lambda_groups
    )
