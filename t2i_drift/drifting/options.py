"""How the drifting field is evaluated: one frozen options object shared by every entry point.

The options fall in two kinds. Most change *what* is computed (temperatures, docs/method.md
section-3 normalization, self-masking, the affinity floor, pooling over processes). Three only
change *how* it is computed and never the numbers: ``memory_budget`` and ``chunk_groups`` (the
result is bitwise independent of the chunking, see :mod:`t2i_drift.drifting.chunking`) and
``compile``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

DEFAULT_TEMPERATURES: tuple[float, ...] = (0.02, 0.05, 0.2)
# Every affinity is at least sqrt(1e-6) = 1e-3 (official release detail, docs/method.md section 2).
DEFAULT_AFFINITY_FLOOR: float = 1e-6

__all__ = ["DEFAULT_AFFINITY_FLOOR", "DEFAULT_OPTIONS", "DEFAULT_TEMPERATURES", "DriftOptions"]


@dataclass(frozen=True)
class DriftOptions:
    """Options of the drifting field and loss; validated on construction (ValueError names the field).

    Attributes:
        temperatures: the taus; the field is summed over them. Any non-empty sequence of finite
            positive numbers, stored as a tuple of floats.
        normalize: True gives the field of docs/method.md section 3 in normalized feature units
            (x / s_in), each V_tau divided by its RMS. False gives the raw field of section 2
            (logits -d / tau on unnormalized distances) summed over temperatures, in feature units.
        mask_self: exclude each generated sample from its own negatives (+100 on its distance).
        gen_as_negatives: use the generated set as negatives (the method). False leaves only the
            extra negatives ``neg`` (the anti-symmetry check of docs/method.md section 8).
        affinity_floor: floor under A_row * A_col (official release: 1e-6); 0 disables it.
        distributed: pool the section-3 scalars over all processes with an all-reduce.
        process_group: the ``torch.distributed.ProcessGroup`` of that all-reduce (None: the default).
        memory_budget: bytes of working memory per group shape; groups are evaluated in chunks that
            fit. None: one chunk.
        chunk_groups: explicit groups per chunk (overrides the budget's choice).
        compile: run the coefficient kernel through ``torch.compile``.
    """

    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    normalize: bool = True
    mask_self: bool = True
    gen_as_negatives: bool = True
    affinity_floor: float = DEFAULT_AFFINITY_FLOOR
    distributed: bool = False
    process_group: Any = None
    memory_budget: int | None = None
    chunk_groups: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        # Frozen dataclass: normalized values are stored with object.__setattr__.
        object.__setattr__(self, "temperatures", _temperatures(self.temperatures))
        for name in ("normalize", "mask_self", "gen_as_negatives", "distributed", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        floor = self.affinity_floor
        if isinstance(floor, bool) or not isinstance(floor, Real) or not 0.0 <= floor < math.inf:
            raise ValueError(f"affinity_floor must be a finite number >= 0, got {floor!r}")
        object.__setattr__(self, "affinity_floor", float(floor))
        for name, what in (("memory_budget", "number of bytes"), ("chunk_groups", "number of groups")):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, Integral) or value <= 0
            ):
                raise ValueError(f"{name} must be None or a positive integer {what}, got {value!r}")


def _temperatures(value: Any) -> tuple[float, ...]:
    """The temperatures as a tuple of floats; ValueError unless non-empty, finite and positive."""
    message = f"temperatures must be a non-empty sequence of finite positive numbers, got {value!r}"
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(message)
    taus = tuple(value)
    if not taus or any(isinstance(tau, bool) or not isinstance(tau, Real) for tau in taus):
        raise ValueError(message)
    taus = tuple(float(tau) for tau in taus)
    if any(not 0.0 < tau < math.inf for tau in taus):
        raise ValueError(message)
    return taus


# The default of every ``options`` argument (frozen, so one shared instance is safe).
DEFAULT_OPTIONS = DriftOptions()
