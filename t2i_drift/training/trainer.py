"""The Accelerate training loop for text-to-image drifting (DESIGN.md "the path of one batch").

    batch (image, caption) -> cached text embeddings (-> VAE latents of the images, model.vae)
    -> per prompt: G noises, one alpha, style
    -> generator forward [B*G, C, R, R] (pixels, or latents) -> frozen features (generated with
       grad, real without)
    -> text_to_image_drift_loss -> backward, clip, AdamW, EMA -> log, checkpoint -> export

Output folder layout (``train.output_dir``):
    config.yaml                 resolved run config
    logs/metrics.jsonl          one JSON line per logged step
    checkpoints/checkpoint-N/   resumable state (safetensors + JSON)
    samples/step-N.png          sample grids of the EMA generator
    pipeline/                   the exported DriftingPipeline (EMA weights): load with
                                DriftingPipeline.from_pretrained(<output_dir>/pipeline)
    run_summary.json            wall time, throughput, peak memory
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from t2i_drift.data.hf import HFImageTextDataset
from t2i_drift.data.images import SkipLog
from t2i_drift.data.splits import caption_hash
from t2i_drift.data.streaming import StreamingImageTextDataset
from t2i_drift.drifting.guidance import sample_alpha
from t2i_drift.drifting.text_to_image import text_to_image_drift_loss
from t2i_drift.models.transformer_drifting import DriftingTransformer2DModel
from t2i_drift.text.cache import TextEmbeddingCache, default_cache_dir
from t2i_drift.text.encoders import TextEmbeddings, TextEncoderSlot, encode_in_batches, encode_text
from t2i_drift.training.batch_inputs import BatchInputs, StepInputs
from t2i_drift.training.builders import (
    build_dataset,
    build_feature_encoder,
    build_optimizer,
    build_transformer,
    feature_key_weights,
    load_text_slots,
    load_vae,
)
from t2i_drift.training.checkpoint import (
    resume_if_requested,
    save_and_prune,
)
from t2i_drift.training.config import Config, save_config
from t2i_drift.training.ema import make_ema
from t2i_drift.training.export import SAMPLE_GRID_NAME, export_pipeline

PIPELINE_SUBDIR = "pipeline"


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def encode_captions(
    cfg: Config,
    slots: list[TextEncoderSlot],
    token_sources: list[int],
    pooled_sources: list[int],
    captions: list[str],
    main: bool,
    accelerator: Accelerator,
) -> TextEmbeddings:
    """Every caption's embeddings, through the on-disk cache when ``text.cache_dir`` is set.

    The main process fills the cache first; the others then only read it.
    """
    if cfg.text.cache_dir is None:
        return encode_in_batches(slots, captions, token_sources, pooled_sources, progress=main)
    root = default_cache_dir() if cfg.text.cache_dir == "auto" else Path(cfg.text.cache_dir)
    cache = TextEmbeddingCache(root, slots, token_sources, pooled_sources)
    with accelerator.main_process_first():
        emb, encoded = cache.get(captions, progress=main)
    if main:
        accelerator.print(f"text embeddings: {encoded} new captions encoded, the rest read from {cache.dir}")
    return emb


def train(cfg: Config) -> Path:
    """Run training as configured; returns the exported pipeline folder."""
    out_dir = Path(cfg.train.output_dir)
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        project_dir=str(out_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.train.seed),
    )
    set_seed(cfg.train.seed, device_specific=True)
    main = accelerator.is_main_process
    if main:
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        (out_dir / "samples").mkdir(exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    G = cfg.drift.samples_per_prompt
    if G < 2:
        raise ValueError(f"drift.samples_per_prompt must be >= 2, got {G}")

    # --- data and text conditioning (frozen) ---
    dataset = build_dataset(cfg, "train")
    streaming = isinstance(dataset, StreamingImageTextDataset)
    skips = SkipLog()  # bad data skipped by the source, reported at the end
    if isinstance(dataset, HFImageTextDataset):
        accelerator.print(f"data: {len(dataset)} pairs from {cfg.data.path}; {dataset.report()}")
        skips.merge(dataset.skipped)
    slots, token_sources, pooled_sources = load_text_slots(cfg.text)
    for slot in slots:
        slot.model.to(accelerator.device)
    if streaming:
        # Captions are not known up front: each batch is encoded as it arrives (or read from
        # shards written by scripts/cache_features.py). Batches are formed in the source.
        table = table_ids = None
        with torch.no_grad():
            probe = encode_text(slots, ["a"], token_sources, pooled_sources, accelerator.device)
        text_dims = probe.embeds.shape[-1], probe.pooled.shape[-1]
        loader = DataLoader(dataset, batch_size=None, num_workers=cfg.data.num_workers)
    else:
        if len(dataset) < cfg.train.batch_size:
            raise ValueError(
                f"train.batch_size={cfg.train.batch_size} exceeds the {len(dataset)} training pairs"
            )
        captions = dataset.captions
        table = encode_captions(cfg, slots, token_sources, pooled_sources, captions, main, accelerator)
        table_ids = torch.tensor([caption_hash(c) for c in captions])
        text_dims = table.embeds.shape[-1], table.pooled.shape[-1]
        loader = DataLoader(
            dataset,
            batch_size=cfg.train.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.data.num_workers,
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )
    # The loop's own generator for noise, alpha and style draws: nothing else consumes it, so a
    # resumed run continues the exact stream (libraries may draw from the global RNG at any time).
    rng = torch.Generator(device=accelerator.device).manual_seed(
        cfg.train.seed * 1000 + accelerator.process_index
    )

    # --- models ---
    vae = load_vae(cfg)
    if vae is not None:
        vae.to(accelerator.device)
    model = build_transformer(cfg, *text_dims, vae)
    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    features = build_feature_encoder(cfg, vae).to(accelerator.device)
    inputs = BatchInputs(
        slots,
        token_sources,
        pooled_sources,
        vae,
        accelerator.device,
        table=table,
        table_ids=table_ids,
        expected_meta=(
            BatchInputs.expected(cfg, slots, token_sources, pooled_sources, vae, features)
            if streaming
            else None
        ),
        source=f"data.path={cfg.data.path!r}",
    )
    optimizer = build_optimizer(model, cfg)
    # Linear warm-up that starts at lr / warmup_steps (diffusers' constant_with_warmup starts at 0,
    # which made the first optimizer step a no-op).
    warmup = max(cfg.optim.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    if streaming:
        # A stream splits itself between processes and workers (data/streaming.py); Accelerate
        # would dispatch or re-shard it.
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    else:
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped: DriftingTransformer2DModel = accelerator.unwrap_model(model)
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
        generators={"train": rng},
    )

    n_params = sum(p.numel() for p in unwrapped.parameters())
    pairs = "streamed" if streaming else len(dataset)
    accelerator.print(
        f"{pairs} training pairs | generator {n_params / 1e6:.2f}M params | "
        f"{cfg.train.batch_size} prompts x {G} samples per step per process | "
        f"{accelerator.num_processes} process(es)"
    )

    # --- loop ---
    metrics_file = (out_dir / "logs" / "metrics.jsonl").open("a") if main else None
    progress = tqdm(total=cfg.train.max_steps, initial=state.step, desc="train", disable=not main)
    distributed = accelerator.num_processes > 1
    samples_per_step = cfg.train.batch_size * G * accelerator.num_processes  # generated, all processes
    t_start = time.perf_counter()
    steps_this_run = 0
    while state.step < cfg.train.max_steps:
        if streaming:
            dataset.set_epoch(state.epoch)
            epoch_loader = skip_stream_batches(loader, state.batches_in_epoch)
        else:
            loader.set_epoch(state.epoch)
            epoch_loader = (
                accelerator.skip_first_batches(loader, state.batches_in_epoch)
                if state.batches_in_epoch
                else loader
            )
        steps_before_epoch = state.step
        for batch in epoch_loader:
            skips.extend(batch.pop("skipped", ()))
            if not batch["caption"]:  # a stream's trailing skip report, no samples
                continue
            stats = train_step(model, unwrapped, features, inputs(batch), cfg, accelerator, distributed, rng)
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
            if state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps:
                elapsed = time.perf_counter() - t_start
                # Stats stay device tensors during the step; one conversion per logged step.
                stats = {k: float(v) for k, v in stats.items()}
                stats.update(
                    step=state.step,
                    lr=scheduler.get_last_lr()[0],
                    samples_per_s=steps_this_run * samples_per_step / elapsed,
                )
                progress.set_postfix(
                    loss=f"{stats['loss']:.3f}",
                    spread=f"{stats['raw/flat/spread']:.3f}" if "raw/flat/spread" in stats else "",
                )
                if metrics_file is not None:
                    metrics_file.write(json.dumps(stats) + "\n")
                    metrics_file.flush()
            if state.step % cfg.train.checkpointing_steps == 0 or state.step == cfg.train.max_steps:
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
                    generators={"train": rng},
                )
            if state.step >= cfg.train.max_steps:
                break
        else:
            if state.step == steps_before_epoch and not state.batches_in_epoch:
                raise ValueError(
                    f"data.path={cfg.data.path!r}: an epoch produced no complete batch of "
                    f"{cfg.train.batch_size} usable samples on process {accelerator.process_index} "
                    f"({skips.report()})"
                )
            state.epoch += 1
            state.batches_in_epoch = 0
    progress.close()
    # Every process's skipped data, reported once.
    all_skips = SkipLog()
    for part in gather_object([skips.to_dict()]) if distributed else [skips.to_dict()]:
        all_skips.merge(SkipLog.from_dict(part))
    if all_skips.total:
        accelerator.print(f"data: {all_skips.report()}")
    wall = time.perf_counter() - t_start
    accelerator.wait_for_everyone()

    # --- export the EMA generator as a pipeline ---
    pipe_dir = out_dir / PIPELINE_SUBDIR
    if main:
        ema_model = DriftingTransformer2DModel.from_config(unwrapped.config)
        ema.copy_to(ema_model.parameters())
        export_pipeline(cfg, ema_model, slots, pipe_dir, steps=state.step, vae=vae)
        # The same grid, kept with the run's other sample grids.
        shutil.copyfile(pipe_dir / SAMPLE_GRID_NAME, out_dir / "samples" / f"step-{state.step}.png")
        summary = {
            "steps": state.step,
            "steps_this_run": steps_this_run,
            "train_wall_s": wall,
            "samples_per_s": steps_this_run * samples_per_step / max(wall, 1e-9),
            "peak_memory_mb": peak_memory_mb(),
            "generator_params": n_params,
            "data_skipped": all_skips.to_dict(),
            "pipeline": str(pipe_dir),
        }
        (out_dir / "run_summary.json").write_text(json.dumps(summary, indent=2))
        accelerator.print(json.dumps(summary, indent=2))
        if metrics_file is not None:
            metrics_file.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return pipe_dir


def skip_stream_batches(loader: DataLoader, count: int):
    """A stream's batches after its first ``count`` non-empty ones (resume inside an epoch: the
    stream is deterministic for a given seed, epoch and worker count). The skipped batches' skip
    reports are passed on."""
    for batch in loader:
        if count > 0 and batch["caption"]:
            count -= 1
            yield {"caption": [], "skipped": batch.get("skipped", [])}
            continue
        yield batch


def train_step(
    model: torch.nn.Module,
    unwrapped: DriftingTransformer2DModel,
    features: torch.nn.Module,
    inputs: StepInputs,
    cfg: Config,
    accelerator: Accelerator,
    distributed: bool,
    rng: torch.Generator,
) -> dict[str, torch.Tensor]:
    """One drifting step for B prompts with G samples each; returns logged scalars."""
    real, emb = inputs.real, inputs.text  # [B, C, H, W]; embeds [B, T, Dt]
    B, G = real.shape[0], cfg.drift.samples_per_prompt
    device = real.device
    alpha = sample_alpha(
        B,
        cfg.drift.alpha_max,
        cfg.drift.alpha_power,
        cfg.drift.alpha_fraction_at_one,
        generator=rng,
        device=device,
    )  # [B], one alpha per prompt
    noise = torch.randn(B * G, *real.shape[1:], device=device, generator=rng)  # [B*G, C, H, W]
    style = unwrapped.sample_style_indices(B * G, generator=rng, device=device)  # [B*G, 32]
    with accelerator.autocast():
        generated = model(
            hidden_states=noise,
            encoder_hidden_states=emb.embeds.repeat_interleave(G, dim=0),  # [B*G, T, Dt]
            encoder_attention_mask=emb.mask.repeat_interleave(G, dim=0),
            pooled_projections=emb.pooled.repeat_interleave(G, dim=0),
            guidance=alpha.repeat_interleave(G),
            style_indices=style,
        ).sample  # [B*G, C, H, W]
        gen_features = features(generated)  # key -> [B*G, L, D], with grad
        if inputs.real_features is not None:  # precomputed in the shards
            real_features = inputs.real_features  # key -> [B, L, D]
            if set(real_features) != set(gen_features):
                raise ValueError(
                    f"cached positive features have keys {sorted(real_features)} but the feature "
                    f"encoder produces {sorted(gen_features)}"
                )
        else:
            with torch.no_grad():
                real_features = features(real)  # key -> [B, L, D]
    loss, stats = text_to_image_drift_loss(
        gen_features,
        real_features,
        G,
        alpha,
        inputs.caption_ids,
        cfg.drift.temperatures,
        key_weights=feature_key_weights(cfg, list(gen_features)),
        distributed=distributed,
        memory_budget=None if cfg.drift.memory_budget_mb is None else int(cfg.drift.memory_budget_mb * 2**20),
        compile=cfg.drift.compile,
    )
    if not torch.isfinite(loss):  # the one device sync per step: never step on a NaN
        raise FloatingPointError(f"non-finite drifting loss {loss.item()} (stats: {stats})")
    accelerator.backward(loss)
    stats["loss"] = loss.detach()
    stats["alpha_mean"] = alpha.mean()
    return stats
