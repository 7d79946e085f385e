"""Deterministic caption-level splits and caption ids."""

from __future__ import annotations

import hashlib


def caption_hash(caption: str) -> int:
    """Stable 63-bit integer of a caption (sha256), identical across processes and machines."""
    return int.from_bytes(hashlib.sha256(caption.encode("utf-8")).digest()[:8], "big") >> 1


def is_validation_caption(caption: str, val_fraction: float) -> bool:
    """True for a deterministic ``val_fraction`` of captions, decided by a hash of the caption alone
    (so a caption, and every image it describes, is always on one side of the split)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    return caption_hash(caption) / 2**63 < val_fraction
