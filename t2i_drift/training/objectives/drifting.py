"""Text-to-image drifting (docs/method.md sections 1-7), one step:

batch -> positives [B, C, H, W] (pixels, or VAE latents) + text conditioning
-> per prompt: G noises, G style draws, one alpha
-> generator forward [B*G, C, H, W] -> frozen features (generated with grad, real without)
   (+ the P - 1 extra positives of each prompt, drift.positives_per_prompt: training/positives.py)
-> text_to_image_drift_loss (group = prompt x location, in-batch unconditional negatives)
"""

from __future__ import annotations

from typing import Any

import torch

from t2i_drift.drifting import DriftOptions, sample_alpha, text_to_image_drift_loss
from t2i_drift.drifting.feature_sets import lambda_groups
from t2i_drift.models.gradient_gate import patch_errors, set_gate, sure_gate
from t2i_drift.models.shifted_encoder import set_shift, shift_offset
from t2i_drift.models.vae import encode_latents
from t2i_drift.training.builders import build_feature_encoder, feature_key_weights, speed_up_encoder
from t2i_drift.training.objectives.text_to_image import TextToImageObjective
from t2i_drift.training.positives import ExtraPositives
from t2i_drift.training.sharding import parameter_count


class DriftingObjective(TextToImageObjective):
    """B prompts per step, ``drift.samples_per_prompt`` (G) generated samples each."""

    name = "drift"

    def build_extra(self, accelerator: Any) -> None:
        cfg = self.cfg
        self.features = speed_up_encoder(
            build_feature_encoder(cfg.features, cfg.data.resolution, self.vae).to(accelerator.device),
            cfg.features,
        )
        self.init_drift(accelerator)
        self.extra_positives = ExtraPositives(cfg.drift, self.source, cfg.data.resolution, self.conditioner)

    def init_drift(self, accelerator: Any) -> None:
        """The field's options (and the per-key weights, fixed at the first step)."""
        cfg = self.cfg
        budget = cfg.drift.memory_budget_mb
        self.options = DriftOptions(
            temperatures=tuple(cfg.drift.temperatures),
            distributed=accelerator.num_processes > 1,
            memory_budget=None if budget is None else int(budget * 2**20),
            compile=cfg.drift.compile,
            mask_self=cfg.drift.mask_self,
            affinity_floor=cfg.drift.affinity_floor,
        )
        self.key_weights: dict[str, float] | None = None  # per feature key, from the first step
        self.lambda_groups: dict[str, str] | None = None  # keys sharing lambda (drift.field_norm)

    def cached_features(self) -> tuple[Any, torch.nn.Module]:
        # The encoder itself, not its torch.compile wrapper: the cache key hashes its weights.
        return self.cfg.features, getattr(self.features, "_orig_mod", self.features)

    @property
    def samples_per_step(self) -> int:
        return self.cfg.train.batch_size * self.cfg.drift.samples_per_prompt

    def describe(self, model: torch.nn.Module) -> str:
        n_params = parameter_count(model)
        drift = self.cfg.drift
        positives = ""
        if drift.positives_per_prompt > 1:
            positives = f" and {drift.positives_per_prompt} positives ({drift.positives_from})"
        return (
            f"generator {n_params / 1e6:.2f}M params | {self.cfg.train.batch_size} prompts x "
            f"{drift.samples_per_prompt} samples{positives} per step per process"
        )

    def extra_positive_features(self, batch: dict, B: int) -> dict[str, torch.Tensor] | None:
        """key -> [B, P-1, L, D] features of the extra positives (no grad), or None when P = 1."""
        pixels = self.extra_positives(batch, self.rng)  # [B, P-1, 3, R, R] or None
        if pixels is None:
            return None
        with torch.no_grad():
            images = pixels.to(self.accelerator.device).flatten(0, 1)  # [B*(P-1), 3, R, R]
            if self.vae is not None:
                images = encode_latents(self.vae, images)  # [B*(P-1), C, R/f, R/f]
            features = self.features(images)  # key -> [B*(P-1), L, D]
        return {k: v.view(B, -1, *v.shape[1:]) for k, v in features.items()}

    def progress_stats(self, line: dict[str, float]) -> dict[str, str]:
        """The raw squared field summed over every key and temperature: it falls as the samples
        reach the data (the normalized loss stays near its per-key target by design)."""
        v2 = sum(v for k, v in line.items() if "/v2/" in k)
        return {"V2": f"{v2:.4g}", "loss": f"{line['loss']:.3f}"}

    def tracker_stats(self, line: dict[str, float]) -> dict[str, float]:
        """loss, lr, grad norm, throughput, mean alpha, and per feature encoder: the raw V^2 of
        each temperature summed over the encoder's keys, and the mean spread of its keys."""
        out = {f"train/{k}": line[k] for k in ("loss", "lr", "grad_norm", "samples_per_s") if k in line}
        if "alpha_mean" in line:
            out["drift/alpha_mean"] = line["alpha_mean"]
        spreads: dict[str, list[float]] = {}
        for key, value in line.items():
            encoder = key.split("/", 1)[0]
            if "/v2/" in key:
                name = f"drift/{encoder}/v2/{key.rsplit('/', 1)[-1]}"
                out[name] = out.get(name, 0.0) + value
                out["drift/v2"] = out.get("drift/v2", 0.0) + value
            elif key.endswith("/spread"):
                spreads.setdefault(encoder, []).append(value)
        for encoder, values in spreads.items():
            out[f"drift/{encoder}/spread"] = sum(values) / len(values)
        return out

    def loss(
        self, model: torch.nn.Module, batch: dict, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        drift, rng, timer = self.cfg.drift, self.rng, self.timer
        with timer("text and positives"):
            inputs = self.inputs(batch)
        # One encoder input shift for everything this step encodes (features.random_shift).
        if self.cfg.features.random_shift:  # off: no module walk on the training step
            set_shift(self.features, shift_offset(self.cfg.features.random_shift, self.cfg.train.seed, step))
        real, emb = inputs.real, inputs.text  # [B, C, H, W]; embeds [B, T, Dt]
        B, G = real.shape[0], drift.samples_per_prompt
        device = real.device
        alpha = sample_alpha(
            B, drift.alpha_max, drift.alpha_power, drift.alpha_fraction_at_one, generator=rng, device=device
        )  # [B], one alpha per prompt
        noise = torch.randn(B * G, *real.shape[1:], device=device, generator=rng)  # [B*G, C, H, W]
        style = self.accelerator.unwrap_model(model).sample_style_indices(B * G, generator=rng, device=device)
        cond = emb.repeat(G)  # embeds [B*G, T, Dt]: sample b*G + i is prompt b's
        with self.accelerator.autocast():
            with timer("generator forward"):
                generated = model(
                    hidden_states=noise,
                    encoder_hidden_states=cond.embeds,
                    encoder_attention_mask=cond.mask,
                    pooled_projections=cond.pooled,
                    guidance=alpha.repeat_interleave(G),
                    style_indices=style,
                ).sample  # [B*G, C, H, W]
            # In a timed backward, everything up to this gradient is the features' share.
            timer.split_at(generated, "features backward")
            with timer("features forward"):
                gated = self.cfg.features.sure_fraction < 1.0
                if gated:
                    # Each sample's (or cell's) squared distance to its paired image picks what the
                    # learned encoders teach this step (features.sure_*); raw teaches everything.
                    errors = patch_errors(
                        generated, real.repeat_interleave(G, 0), self.cfg.features.sure_patch
                    )
                    set_gate(self.features, sure_gate(errors, self.cfg.features.sure_fraction))
                gen_features = self.features(generated)  # key -> [B*G, L, D], with grad
                if gated:  # the positives pass ungated
                    set_gate(self.features, None)
                real_features = inputs.real_features  # key -> [B, L, D], when cached in the data
                if real_features is None:
                    with torch.no_grad():
                        real_features = self.features(real)
                elif set(real_features) != set(gen_features):
                    raise ValueError(
                        f"cached positive features have keys {sorted(real_features)} but the feature "
                        f"encoder produces {sorted(gen_features)}"
                    )
                extra_features = self.extra_positive_features(batch, B)
        if self.key_weights is None:
            self.key_weights = feature_key_weights(self.cfg.features, list(gen_features))
            self.lambda_groups = lambda_groups(gen_features, drift.field_norm)
        caption_ids = inputs.caption_ids
        if not drift.sibling_negatives:
            # Every sample its own prompt: the paired features repeat for each of its G samples
            # (rows stay prompt-major), and equal caption ids keep the copies out of the
            # unconditional negatives.
            real_features = {k: v.repeat_interleave(G, 0) for k, v in real_features.items()}
            if extra_features is not None:
                extra_features = {k: v.repeat_interleave(G, 0) for k, v in extra_features.items()}
            alpha, caption_ids, G = alpha.repeat_interleave(G), caption_ids.repeat_interleave(G), 1
        with timer("drift field"):
            loss, stats = text_to_image_drift_loss(
                gen_features,
                real_features,
                G,
                alpha,
                caption_ids,
                self.options,
                key_weights=self.key_weights,
                extra_positives=extra_features,
                lambda_groups=self.lambda_groups,
            )
        stats["alpha_mean"] = alpha.mean()
        return loss, stats
