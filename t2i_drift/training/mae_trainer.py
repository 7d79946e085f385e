"""The Accelerate loop that trains the MAE feature encoder (METHOD.md section 4).

    batch of images [B, 3, R, R] in [-1, 1] (-> scaled VAE latents, model.vae)
    -> pretraining (steps 1 .. train.max_steps): mask half the 2x2 patches, reconstruct, MSE on
       the masked cells
    -> fine-tune (the next finetune.steps, datasets with labels only): cross-entropy of the
       unmasked input's class + finetune.reconstruction_weight * the masked MSE
    -> backward, clip, AdamW, EMA -> log, checkpoint -> save_pretrained of the EMA model

One step counter runs through both phases, so checkpoints and exact resume work across the
boundary. At the boundary the EMA restarts from the online weights (the fine-tuned average should
not be dominated by pretraining weights, nor the new head by its random init) and the learning rate
switches to ``finetune.learning_rate``.

Output folder layout (``train.output_dir``):
    config.yaml                 resolved run config
    logs/metrics.jsonl          one JSON line per logged step (losses averaged over the window)
    checkpoints/checkpoint-N/   resumable state (safetensors + JSON; the model in ``mae/``)
    mae_pretrained/             the EMA model at the end of pretraining (only with a fine-tune)
    mae/                        the final EMA model: ResNetMAE.from_pretrained / MAEFeatures(path)
    run_summary.json            wall time, throughput, peak memory, parameters
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm

from t2i_drift.models.mae_resnet import ResNetMAE
from t2i_drift.training.builders import (
    build_dataset,
    build_optimizer,
    encode_latents,
    load_vae,
    vae_scale_factor,
)
from t2i_drift.training.checkpoint import (
    resume_if_requested,
    save_and_prune,
)
from t2i_drift.training.config import save_config
from t2i_drift.training.ema import make_ema
from t2i_drift.training.mae_config import MAEConfig
from t2i_drift.training.trainer import peak_memory_mb

MAE_SUBDIR = "mae"
MAE_PRETRAINED_SUBDIR = "mae_pretrained"


def mae_lr_factor(step: int, warmup_steps: int, pretrain_steps: int, finetune_factor: float) -> float:
    """Learning-rate multiplier before optimizer step ``step + 1``: linear warm-up, constant, then
    ``finetune_factor`` (= finetune.learning_rate / optim.learning_rate) from the fine-tune phase on."""
    if step >= pretrain_steps:
        return finetune_factor
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1.0


def build_mae(cfg: MAEConfig, in_channels: int, sample_size: int, num_classes: int) -> ResNetMAE:
    """The configured ResNetMAE for inputs of ``in_channels`` x ``sample_size``^2."""
    m = cfg.model
    return ResNetMAE(
        in_channels=in_channels,
        sample_size=sample_size,
        width=m.width,
        depths=tuple(m.depths),
        stem_patch_size=m.stem_patch_size,
        mask_patch_size=m.mask_patch_size,
        mask_ratio=m.mask_ratio,
        norm_num_groups=m.norm_num_groups,
        decoder_width=m.decoder_width,
        num_classes=num_classes,
    )


def train_mae(cfg: MAEConfig) -> Path:
    """Run MAE training as configured; returns the saved EMA model folder (``<output_dir>/mae``)."""
    out_dir = Path(cfg.train.output_dir)

    # --- data (labels decide whether the fine-tune phase runs) ---
    # build_dataset reads only cfg.data and cfg.train.seed, which MAEConfig shares with Config.
    dataset = build_dataset(cfg, "train")  # type: ignore[arg-type]
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            f"data.name={cfg.data.name!r}: the MAE trainer needs an in-memory dataset, not a stream"
        )
    if len(dataset) < cfg.train.batch_size:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} exceeds the {len(dataset)} training images"
        )
    num_classes = int(getattr(dataset, "num_classes", 0)) if cfg.finetune.steps > 0 else 0
    finetune_steps = cfg.finetune.steps if num_classes > 0 else 0
    total_steps = cfg.train.max_steps + finetune_steps

    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        project_dir=str(out_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.train.seed),
        # The classification head takes no part in pretraining: DDP must not wait for its gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=num_classes > 0)],
    )
    set_seed(cfg.train.seed, device_specific=True)
    main = accelerator.is_main_process
    if main:
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    if cfg.finetune.steps > 0 and finetune_steps == 0:
        accelerator.print(
            f"finetune.steps={cfg.finetune.steps} skipped: data.name={cfg.data.name!r} provides no labels"
        )
    # The loop's own generator for the masks: a resumed run continues the exact stream.
    rng = torch.Generator(device=accelerator.device).manual_seed(
        cfg.train.seed * 1000 + accelerator.process_index
    )
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.data.num_workers,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )

    # --- input space and model ---
    vae = load_vae(cfg)  # type: ignore[arg-type]  # reads cfg.model.vae / vae_subfolder only
    in_channels, sample_size = 3, cfg.data.resolution
    if vae is not None:
        vae.to(accelerator.device)
        factor = vae_scale_factor(vae)
        cell = cfg.model.stem_patch_size * cfg.model.mask_patch_size
        if cfg.data.resolution % (factor * cell):
            raise ValueError(
                f"data.resolution={cfg.data.resolution} must be divisible by the VAE factor {factor} x "
                f"model.stem_patch_size * model.mask_patch_size = {cell}"
            )
        in_channels, sample_size = vae.config.latent_channels, cfg.data.resolution // factor
    model = build_mae(cfg, in_channels, sample_size, num_classes)
    optimizer = build_optimizer(model, cfg)  # type: ignore[arg-type]  # reads cfg.optim only
    # Not passed to accelerator.prepare: accelerate steps a prepared scheduler once per process,
    # which would move the phase boundary; this one counts optimizer steps.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        functools.partial(
            mae_lr_factor,
            warmup_steps=max(cfg.optim.warmup_steps, 1),
            pretrain_steps=cfg.train.max_steps,
            finetune_factor=cfg.finetune.learning_rate / cfg.optim.learning_rate,
        ),
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    unwrapped: ResNetMAE = accelerator.unwrap_model(model)
    ema = make_ema(unwrapped, cfg.optim, accelerator.device)

    # --- resume ---
    ckpt_root = out_dir / "checkpoints"
    state = resume_if_requested(
        cfg.train.resume_from_checkpoint,
        ckpt_root,
        log=accelerator.print,
        model=unwrapped,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        process_index=accelerator.process_index,
        generators={"mask": rng},
        model_subfolder=MAE_SUBDIR,
    )

    n_params = sum(p.numel() for p in unwrapped.parameters())
    accelerator.print(
        f"{len(dataset)} training images | ResNetMAE {n_params / 1e6:.2f}M params | input "
        f"{in_channels}x{sample_size}x{sample_size} | {cfg.train.max_steps} pretraining + {finetune_steps} "
        f"fine-tune steps | {cfg.train.batch_size} images per step per process | "
        f"{accelerator.num_processes} process(es)"
    )

    # --- loop ---
    metrics_file = (out_dir / "logs" / "metrics.jsonl").open("a") if main else None
    progress = tqdm(total=total_steps, initial=state.step, desc="mae", disable=not main)
    images_per_step = cfg.train.batch_size * accelerator.num_processes
    window: dict[str, torch.Tensor] = {}  # stat sums since the last log line
    window_steps = 0
    t_start = time.perf_counter()
    steps_this_run = 0
    while state.step < total_steps:
        loader.set_epoch(state.epoch)
        epoch_loader = (
            accelerator.skip_first_batches(loader, state.batches_in_epoch)
            if state.batches_in_epoch
            else loader
        )
        for batch in epoch_loader:
            finetuning = state.step >= cfg.train.max_steps
            if finetuning and state.step == cfg.train.max_steps:
                start_finetune(unwrapped, ema, out_dir / MAE_PRETRAINED_SUBDIR, main)
            stats = mae_step(model, batch, cfg, accelerator, rng, vae, finetuning)
            step_lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
            if accelerator.sync_gradients:
                if cfg.optim.max_grad_norm > 0:
                    stats["grad_norm"] = accelerator.clip_grad_norm_(
                        model.parameters(), cfg.optim.max_grad_norm
                    )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                ema.step(unwrapped.parameters())
            state.step += 1
            state.batches_in_epoch += 1
            steps_this_run += 1
            progress.update(1)
            for key, value in stats.items():  # device tensors: no sync until the log step
                window[key] = window.get(key, 0.0) + value.detach().float()
            window_steps += 1
            # Also log the last pretraining step, so no window mixes the two phases.
            if state.step % cfg.train.log_every == 0 or state.step in (cfg.train.max_steps, total_steps):
                elapsed = time.perf_counter() - t_start
                line = {k: float(v) / window_steps for k, v in window.items()}
                line.update(
                    step=state.step,
                    phase="finetune" if finetuning else "pretrain",
                    lr=step_lr,
                    images_per_s=steps_this_run * images_per_step / elapsed,
                )
                window, window_steps = {}, 0
                progress.set_postfix(loss=f"{line['loss']:.4f}", phase=line["phase"])
                if metrics_file is not None:
                    metrics_file.write(json.dumps(line) + "\n")
                    metrics_file.flush()
            if state.step % cfg.train.checkpointing_steps == 0 or state.step == total_steps:
                save_and_prune(
                    accelerator,
                    ckpt_root,
                    cfg.train.checkpoints_total_limit,
                    model=unwrapped,
                    ema=ema,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    state=state,
                    config=cfg.to_dict(),
                    generators={"mask": rng},
                    model_subfolder=MAE_SUBDIR,
                )
            if state.step >= total_steps:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    progress.close()
    wall = time.perf_counter() - t_start
    accelerator.wait_for_everyone()

    # --- save the EMA model: the folder MAEFeatures loads ---
    mae_dir = out_dir / MAE_SUBDIR
    if main:
        save_ema_model(unwrapped, ema, mae_dir)
        summary = {
            "steps": state.step,
            "pretrain_steps": cfg.train.max_steps,
            "finetune_steps": finetune_steps,
            "steps_this_run": steps_this_run,
            "train_wall_s": wall,
            "images_per_s": steps_this_run * images_per_step / max(wall, 1e-9),
            "peak_memory_mb": peak_memory_mb(),
            "mae_params": n_params,
            "mae": str(mae_dir),
        }
        (out_dir / "run_summary.json").write_text(json.dumps(summary, indent=2))
        accelerator.print(json.dumps(summary, indent=2))
        if metrics_file is not None:
            metrics_file.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return mae_dir


def save_ema_model(model: ResNetMAE, ema: EMAModel, path: Path) -> None:
    """``save_pretrained`` of a copy of ``model`` carrying the EMA weights."""
    ema_model = ResNetMAE.from_config(model.config)
    ema.copy_to(ema_model.parameters())
    ema_model.save_pretrained(path)


def start_finetune(model: ResNetMAE, ema: EMAModel, pretrained_dir: Path, main: bool) -> None:
    """Phase boundary: keep the pretraining EMA model, then restart the EMA from the online weights."""
    if main:
        save_ema_model(model, ema, pretrained_dir)
    ema.shadow_params = [p.detach().clone() for p in model.parameters()]
    ema.optimization_step = 0  # the decay warm-up starts again


def mae_step(
    model: torch.nn.Module,
    batch: dict,
    cfg: MAEConfig,
    accelerator: Accelerator,
    rng: torch.Generator,
    vae: torch.nn.Module | None,
    finetuning: bool,
) -> dict[str, torch.Tensor]:
    """One MAE step (pretraining or fine-tune); returns logged scalars (device tensors)."""
    x = batch["pixel_values"]  # [B, 3, R, R] in [-1, 1]
    if vae is not None:
        x = encode_latents(vae, x)  # [B, C_lat, R/f, R/f]
    with accelerator.autocast():
        out = model(x, generator=rng, classify=finetuning)
    stats = {"rec_loss": out.loss.detach()}
    loss = out.loss
    if finetuning:
        labels = batch["label"].to(x.device)  # [B]
        ce = F.cross_entropy(out.logits.float(), labels)
        loss = ce + cfg.finetune.reconstruction_weight * out.loss
        stats["ce_loss"] = ce.detach()
        stats["accuracy"] = (out.logits.argmax(dim=-1) == labels).float().mean()
    if not torch.isfinite(loss):  # never step on a NaN
        raise FloatingPointError(f"non-finite MAE loss {loss.item()} (rec_loss {out.loss.item()})")
    accelerator.backward(loss)
    stats["loss"] = loss.detach()
    return stats
