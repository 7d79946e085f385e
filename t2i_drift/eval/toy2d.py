"""2-D toy experiments of the drifting objective: the paper's Figure 3 and the official notebook.

A small MLP maps 2-D Gaussian noise to a 2-D point in one forward pass and is trained with the
*raw* field (docs/method.md section 8: no section-3 normalization, as the official notebook) on fresh
samples of the target at every step: one group, the generated batch as the self-masked
negatives, a target batch of the same size as the positives.

Targets:
    bimodal        two Gaussians at (-2, 0) and (+2, 0), std 0.3 (Figure 3)
    swiss_roll     the 2-D Swiss roll, scaled to about unit std (notebook)
    checkerboard   uniform on the black squares of a 4x4 board on [-2, 2]^2 (notebook)

Initializations (Figure 3), each a Gaussian of the modes' std: ``between`` the modes (at the
origin), ``far`` away (at (0, 6), equally far from both), ``collapsed`` onto the left mode.
``default`` is the plain PyTorch init.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn
from tqdm.auto import tqdm

from t2i_drift.drifting import DEFAULT_AFFINITY_FLOOR, DriftGroups, DriftOptions, evaluate_drift

BIMODAL_CENTER = 2.0
BIMODAL_STD = 0.3
TARGETS = ("bimodal", "swiss_roll", "checkerboard")
# Initial generator distribution N(center, spread^2 I) for each initialization (None: PyTorch's).
INITS: dict[str, tuple[tuple[float, float], float] | None] = {
    "default": None,
    "between": ((0.0, 0.0), BIMODAL_STD),
    "far": ((0.0, 6.0), BIMODAL_STD),
    "collapsed": ((-BIMODAL_CENTER, 0.0), BIMODAL_STD),
}


def sample_target(name: str, num: int, generator: torch.Generator) -> torch.Tensor:
    """[num, 2] samples of a toy target distribution (see the module docstring)."""
    if name == "bimodal":
        side = torch.randint(0, 2, (num, 1), generator=generator).float() * 2 - 1
        center = torch.cat([side * BIMODAL_CENTER, torch.zeros(num, 1)], dim=1)
        return center + BIMODAL_STD * torch.randn(num, 2, generator=generator)
    if name == "swiss_roll":
        t = 1.5 * math.pi * (1 + 2 * torch.rand(num, generator=generator))
        pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 5.0
        return pts + 0.05 * torch.randn(num, 2, generator=generator)
    if name == "checkerboard":
        x = torch.rand(num, generator=generator) * 4 - 2
        y_cell = torch.randint(0, 2, (num,), generator=generator) * 2  # rows 0 or 2 of a pair
        y = torch.rand(num, generator=generator) + y_cell - 2 + (torch.floor(x + 2) % 2)
        return torch.stack([x, y], dim=1)
    raise ValueError(f"unknown toy target {name!r}; choose one of {list(TARGETS)}")


class ToyGenerator(nn.Module):
    """MLP generator with a linear skip, x = W eps + b + MLP(eps): 2-D noise -> 2-D sample.

    The skip makes the Figure 3 initializations exact: with the MLP's last layer zeroed, W =
    spread * I and b = center, the generator starts as N(center, spread^2 I).
    """

    def __init__(self, hidden: int = 256, depth: int = 3, init: str = "default") -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {list(INITS)}")
        layers: list[nn.Module] = []
        width = 2
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(hidden, 2))
        self.mlp = nn.Sequential(*layers)
        self.skip = nn.Linear(2, 2)
        spec = INITS[init]
        if spec is not None:
            center, spread = spec
            with torch.no_grad():
                layers[-1].weight.zero_()
                layers[-1].bias.zero_()
                self.skip.weight.copy_(spread * torch.eye(2))
                self.skip.bias.copy_(torch.tensor(center))

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """[N, 2] noise -> [N, 2] samples."""
        return self.skip(noise) + self.mlp(noise)


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance 2 E|A-B| - E|A-A'| - E|B-B'| between two [N, 2] samples (0 iff equal laws)."""
    a, b = a.double(), b.double()
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def left_mass(x: torch.Tensor) -> float:
    """Fraction of samples in the left half-plane (the left mode of the bimodal target)."""
    return float((x[:, 0] < 0).float().mean())


@dataclass
class ToyRun:
    """History of one toy run. ``v2`` is the raw mean ||V||^2 per sample (summed over the 2 dims)."""

    target: str
    init: str
    temperature: float
    steps: list[int] = field(default_factory=list)
    v2: list[float] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)
    left: list[float] = field(default_factory=list)
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)


def train_toy(
    target: str,
    init: str = "default",
    steps: int = 1000,
    batch: int = 512,
    temperature: float = 0.2,
    lr: float = 1e-3,
    affinity_floor: float = DEFAULT_AFFINITY_FLOOR,
    seed: int = 0,
    log_every: int = 50,
    snapshot_steps: tuple[int, ...] = (),
    eval_samples: int = 2048,
    progress: bool = False,
    callback: Callable[[ToyRun], None] | None = None,
) -> ToyRun:
    """Train a :class:`ToyGenerator` with the raw drifting field (docs/method.md sections 2, 8).

    Each step: ``batch`` generated samples x (the self-masked negatives) and ``batch`` fresh target
    samples y (the positives) form one group; loss = mean ||x - stopgrad(x + V)||^2; Adam.

    Returns:
        the run's history, evaluated every ``log_every`` steps (and at 0 and ``steps``) on
        ``eval_samples`` fresh samples of each distribution.
    """
    torch.manual_seed(seed)
    gen_rng = torch.Generator().manual_seed(seed + 1)
    model = ToyGenerator(init=init)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    run = ToyRun(target, init, temperature)
    eval_noise = torch.randn(eval_samples, 2, generator=torch.Generator().manual_seed(seed + 2))
    eval_target = sample_target(target, eval_samples, torch.Generator().manual_seed(seed + 3))

    def record(step: int, v2: float) -> None:
        with torch.no_grad():
            x = model(eval_noise)
        run.steps.append(step)
        run.v2.append(v2)
        run.energy.append(energy_distance(x, eval_target))
        run.left.append(left_mass(x))
        if step in snapshot_steps:
            run.snapshots[step] = x.clone()
        if callback is not None:
            callback(run)

    # One group: the batch of generated samples against a fresh target batch, raw field.
    options = DriftOptions(temperatures=(temperature,), normalize=False, affinity_floor=affinity_floor)
    v2 = float("nan")
    for step in tqdm(range(steps + 1), desc=f"{target}/{init}", disable=not progress):
        x = model(torch.randn(batch, 2, generator=gen_rng))
        y = sample_target(target, batch, gen_rng)
        result = evaluate_drift({"toy": DriftGroups(x[None], y[None])}, options)["toy"]
        v2 = float(result.raw_v2[float(temperature)]) * 2  # mean over dims -> ||V||^2 per sample
        if step % log_every == 0 or step == steps or step in snapshot_steps:
            record(step, v2)
        if step == steps:
            break
        loss = F.mse_loss(x, (x + result.field[0]).detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


def render_density(
    points: torch.Tensor,
    extent: float = 4.0,
    size: int = 160,
    title: str = "",
    reference: torch.Tensor | None = None,
) -> Image.Image:
    """A 2-D histogram of ``points`` on [-extent, extent]^2 as a labelled grayscale panel.

    ``reference`` (e.g. target samples) is drawn underneath in light blue.
    """
    box = [[-extent, extent], [-extent, extent]]
    pts = points.detach().cpu().numpy()
    hist, _, _ = np.histogram2d(pts[:, 1], pts[:, 0], bins=size, range=box)
    hist = hist[::-1]  # y grows upwards
    shade = 255 - (255 * np.sqrt(hist / max(hist.max(), 1.0))).astype(np.uint8)
    rgb = np.stack([shade] * 3, axis=-1)
    if reference is not None:
        ref, _, _ = np.histogram2d(reference[:, 1].numpy(), reference[:, 0].numpy(), bins=size, range=box)
        under = (ref[::-1] > 0) & (hist == 0)
        rgb[under] = (200, 220, 255)
    panel = Image.new("RGB", (size, size + 14), "white")
    panel.paste(Image.fromarray(rgb), (0, 14))
    ImageDraw.Draw(panel).text((2, 1), title, fill="black")
    return panel


def tile(panels: list[list[Image.Image]], pad: int = 4) -> Image.Image:
    """Rows of equally sized panels -> one image."""
    w, h = panels[0][0].size
    cols = max(len(row) for row in panels)
    out = Image.new("RGB", (cols * (w + pad) + pad, len(panels) * (h + pad) + pad), "white")
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            out.paste(panel, (pad + c * (w + pad), pad + r * (h + pad)))
    return out
