"""The text-to-image run configuration: a tree of typed dataclasses, loaded from a YAML recipe and
``section.key=value`` overrides with strict checking (training/strict_config.py): unknown keys,
wrong types and out-of-range values are errors that name the file or override and the dotted key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from t2i_drift.data.shapes import CAPTION_OMITS
from t2i_drift.drifting.feature_sets import FieldNormScope
from t2i_drift.models.transformer_drifting import TextAttention
from t2i_drift.text.open_clip_text import OPEN_CLIP_PREFIX
from t2i_drift.training.strict_config import (
    ConfigError,
    apply_overrides,
    check_ranges,
    load_tree,
    save_config,
)
from t2i_drift.training.strict_config import config_from_dict as _tree_from_dict

__all__ = ["Config", "ConfigError", "apply_overrides", "config_from_dict", "load_config", "save_config"]


@dataclass
class DataConfig:
    name: Literal["openmoji", "shapes", "photos", "hf", "webdataset"] = "openmoji"
    """``openmoji`` (built-in captioned emoji), ``shapes`` (built-in compositional set with a
    checker; t2i_drift/data/shapes.py), ``photos`` (crops of scikit-image's sample photographs,
    captioned by subject: textured natural images; t2i_drift/data/photos.py), ``hf`` (``data.path``
    through HF datasets) or ``webdataset`` (tar shards at ``data.path``; t2i_drift/data/webdataset.py)."""
    path: str | None = None
    """``hf``: a hub dataset name, a local imagefolder (images + metadata.jsonl/csv), or parquet /
    arrow files (a glob works). ``webdataset``: shard URL(s): a path, a brace pattern
    ``shards/{000000..000099}.tar``, ``a::b`` lists, ``pipe:<command>`` or http(s) URLs."""
    split: str = "train"
    """``hf``: the dataset split to train on."""
    image_column: str = "image"
    """``hf``: the column holding the images."""
    caption_columns: list[str] = field(default_factory=lambda: ["text"])
    """One or several caption columns; with several, each row uses one picked at random (seeded)."""
    streaming: bool = False
    """``hf`` only: stream the rows (``load_dataset(streaming=True)``) instead of decoding them all
    into memory first; captions are then encoded per batch."""
    image_keys: str = "jpg;jpeg;png;webp"
    """``webdataset`` only: member extensions tried in order for a sample's image."""
    caption_keys: str = "txt;caption;json"
    """``webdataset`` only: member extensions whose captions are candidates (json: its caption /
    text field); one is picked at random per sample (seeded)."""
    allow_shell: bool = False
    """``webdataset`` only: allow ``pipe:<command>`` shard URLs, which run a shell command for
    each shard. Off by default, so a recipe from elsewhere cannot run commands on your machine."""
    resampled: bool = False
    """``webdataset`` only: draw shards with replacement, forever (no epochs; the usual choice for
    multi-node runs, where shards cannot be split evenly)."""
    shuffle_buffer: int = 1000
    """Streaming sources: samples held in the shuffle buffer (0: stream order)."""
    min_size: int = 8
    """``hf`` and ``webdataset``: images whose shorter side is smaller are skipped (and reported)."""
    resolution: int = 32
    """Training images are resized (shorter side) and centre-cropped to this square side in pixels."""
    val_fraction: float = 0.05
    """Share of captions held out (by caption hash) as the validation split."""
    max_samples: int | None = None
    """Keep only the first N training pairs (tests, quick runs); streamed ``hf``: per process."""
    num_workers: int = 0
    """DataLoader worker processes for decoding (0: in the training process)."""
    renders_per_scene: int = 4
    """``shapes`` only: jittered renders of each scene (its 788 training scenes x this)."""
    shapes_omit: list[str] = field(default_factory=list)
    """``shapes`` only: attributes the captions leave out, among ``position`` and ``size``: each
    caption then describes several scenes (a multimodal conditional; t2i_drift/data/shapes.py)."""


@dataclass
class ModelConfig:
    preset: str = "XS"
    """Named size from ``DRIFTING_PRESETS`` (tiny, XS, S, M, B, L)."""
    patch_size: int = 4
    """Side of the square patch each token covers (pixels, or latent cells with ``model.vae``)."""
    text_attention: TextAttention = "cross"
    """``cross``: image tokens cross-attend to the text tokens in every block; ``joint``: text
    tokens join the sequence (single-stream self-attention)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Any other ``DriftingTransformer2DModel`` config argument, e.g. {num_layers: 8}."""
    vae: str | None = None
    """A diffusers ``AutoencoderKL`` (hub id or local folder): the generator then works in its latent
    space (scaling and shift factors from the VAE config) and the pipeline decodes."""
    vae_subfolder: str | None = None
    """The VAE's folder inside a pipeline repository, e.g. ``vae``."""
    gradient_checkpointing: bool = False
    """Recompute block activations in the backward pass (less memory, about a third more time)."""
    attention_backend: str | None = None
    """diffusers attention backend of the generator (``native`` = PyTorch SDPA, ``_native_flash``,
    ``_native_efficient``, ``_native_cudnn``, ``flash``, ...); null: diffusers' default. The
    toolkit's generator routes attention through diffusers' dispatcher, so any backend it knows works."""


TextEncoderName = Literal["text_encoder", "text_encoder_2"]
PoolingName = Literal["auto", "mean", "cls", "pooler"]
TextLayerName = Literal["last", "penultimate"]


@dataclass
class TextConfig:
    encoder: str = "minilm"
    """``minilm`` (offline, built in), a hub id / local folder of a transformers text encoder
    (BERT-like, CLIP, CLIP with projection, T5), or ``open_clip:<model>`` (``open_clip:ViT-H-14``,
    ``open_clip:hf-hub:<id>``): the pipeline's ``text_encoder``."""
    subfolder: str | None = None
    """The encoder's folder inside a pipeline repository, e.g. ``text_encoder``."""
    max_length: int = 32
    """Text tokens (padding and truncation length) of ``text.encoder``."""
    pooling: PoolingName = "auto"
    """``auto``: the pooled output for CLIP and open_clip, the L2-normalized masked mean otherwise."""
    pretrained: str | None = None
    """open_clip encoders only: a pretrained tag (``laion2b_s32b_b79k``), a local checkpoint file,
    or ``none`` (random weights); unset for ``hf-hub:`` / ``local-dir:`` models (their own weights)."""
    layer: TextLayerName = "last"
    """open_clip encoders only: token states after the final LayerNorm, or the raw output of the
    second-to-last block (``penultimate``, as SDXL conditions on it)."""
    encoder_2: str | None = None
    """An optional second encoder (``text_encoder_2``), e.g. CLIP next to a T5, or an open_clip
    bigG next to CLIP-L as in SDXL."""
    subfolder_2: str | None = None
    """``subfolder`` of ``text.encoder_2``."""
    max_length_2: int = 77
    """``max_length`` of ``text.encoder_2``."""
    pooling_2: PoolingName = "auto"
    """``pooling`` of ``text.encoder_2``."""
    pretrained_2: str | None = None
    """``pretrained`` of ``text.encoder_2`` (open_clip only)."""
    layer_2: TextLayerName = "last"
    """``layer`` of ``text.encoder_2`` (open_clip only)."""
    token_sources: list[TextEncoderName] = field(default_factory=lambda: ["text_encoder"])
    """Encoders whose token embeddings condition the generator (concatenated along the sequence)."""
    pooled_sources: list[TextEncoderName] = field(default_factory=lambda: ["text_encoder"])
    """Encoders whose pooled embeddings enter the adaLN vector (concatenated along channels)."""
    cache_dir: str | None = "auto"
    """On-disk embedding cache: ``auto`` = $HF_HOME/t2i_drift/text_embeddings; null disables it."""


@dataclass
class RawFeatureConfig:
    """The flattened generator output as one feature key (``raw/flat``)."""

    weight: float = 1.0
    """Loss weight of the key (docs/method.md section 3: 1, a plain sum over keys)."""


@dataclass
class EffNetFeatureConfig:
    """Frozen ImageNet EfficientNet-Lite0 multi-scale features (shipped offline)."""

    blocks: list[int] = field(default_factory=lambda: [0, 2, 4, 10])
    """MBConv blocks whose output maps give feature sets (0: 16 ch /2 ... 15: 320 ch /32)."""
    input_size: int = 32
    """Side the images are resized to before the network."""
    weight: float = 1.0
    """Loss weight of every EfficientNet key."""


@dataclass
class MAEFeatureConfig:
    """A trained ResNetMAE (scripts/train_mae.py), the paper's encoder."""

    path: str = ""
    """Its folder (a train_mae output folder or its ``mae/`` subfolder); its ``in_channels`` must
    match the generator's space (3 for pixels, the VAE's latent channels with ``model.vae``)."""
    maps: list[str] | None = None
    """Feature maps to use (``s1.b2``, ``s1.out``, ..., ``s4.out``); null: all nine."""
    weight: float = 1.0
    """Loss weight of every MAE key."""
    stem: bool = False
    """Also take the stem output (conv + GroupNorm + ReLU) as a map, ``mae.stem`` (official: yes)."""
    stage_norm: bool = False
    """Each stage output ``s<i>.out`` through a parameter-free GroupNorm (the MAE's group count)
    before its sets; a stage of even depth then also gives its raw last block ``s<i>.b<d>``
    (official: a per-stage GroupNorm)."""
    keep_single_cell_patches: bool = False
    """Keep patch mean/std sets whose pooled map is one cell (4x4 patches of a 4x4 map; equal to
    the global mean/std but their own keys), as the official release does on its deepest maps."""
    input_rms_on_encoder_input: bool = False
    """Take ``mae/input_rms`` on what the stem reads (space-to-depth by ``stem_patch_size``) rather
    than on the image (official: on the encoder's space-to-depth input)."""


@dataclass
class HubFeatureConfig:
    """Any transformers vision backbone (ConvNeXt-V2, DINOv2, ...), frozen."""

    name: str = ""
    """Hub id or local folder, e.g. ``facebook/convnextv2-tiny-22k-224``."""
    out_features: list[str] | None = None
    """The backbone's stages to use (``stage1``...); null: every stage but the stem."""
    input_size: int | None = None
    """Side the images are resized to; null: from its preprocessor config."""
    weight: float = 1.0
    """Loss weight of every hub-backbone key."""
    location_norm: bool = False
    """LayerNorm over channels (no affine) at each location of each map before its sets, as the
    official release does with ConvNeXt-V2."""


@dataclass
class VAEFeatureConfig:
    """The encoder of a frozen diffusers AutoencoderKL (e.g. scripts/train_vae.py's) as keys of a
    pixel-space generator (t2i_drift/models/vae_features.py); in a latent run it reads the decoded
    latents, like the other pixel encoders."""

    path: str = ""
    """Hub id or local folder of the AutoencoderKL."""
    subfolder: str | None = None
    """Its subfolder (e.g. ``vae`` inside a pipeline folder)."""
    maps: list[str] = field(default_factory=lambda: ["latent"])
    """Encoder maps giving feature sets: ``down0``..., ``mid``, ``latent`` (the scaled posterior mean)."""
    flat: bool = True
    """Also the scaled latent as one vector, ``vae.latent/flat`` (needs ``latent`` in ``maps``):
    the key a latent-space generator's raw output gives."""
    weight: float = 1.0
    """Loss weight of every VAE key."""


FEATURE_ENCODERS = ("raw", "effnet", "mae", "hub", "vae")
LEARNED_ENCODERS = FEATURE_ENCODERS[1:]
"""The encoders other than ``raw``: the ones ``random_shift`` and ``sure_fraction`` act on."""


@dataclass
class FeaturesConfig:
    """Frozen feature encoders whose keys enter the drifting loss, each with its own weight; null
    switches an encoder off. With ``model.vae`` the pixel-space encoders (``effnet``, ``hub``, ``vae``) see
    the VAE-decoded latents (frozen but differentiable decoder)."""

    raw: RawFeatureConfig | None = field(default_factory=RawFeatureConfig)
    effnet: EffNetFeatureConfig | None = None
    """Off by default: at 32 px these keys drive the generator to per-patch textures
    (docs/results.md "Feature spaces")."""
    mae: MAEFeatureConfig | None = None
    hub: HubFeatureConfig | None = None
    vae: VAEFeatureConfig | None = None
    """Off by default: a VAE trained on the data (docs/method.md section 4)."""
    patch_sizes: list[int] = field(default_factory=lambda: [2, 4])
    """Patch mean/std sets of every encoder's feature maps (docs/method.md section 4)."""
    per_location: bool = True
    """Include set (a), per-location vectors, of every encoder's feature maps."""
    drop_keys: list[str] = field(default_factory=list)
    """Feature keys left out of the loss, as shell-style patterns over the key names
    (``mae.s1.b2/loc``, ``mae.s4.out/std2x2``, ``raw/flat``): ``["mae.s4.*"]`` drops a stage,
    ``["*/loc"]`` every per-location set. Each pattern must match a key of the configured
    encoders, and at least one key must remain (checked before training)."""
    random_shift: int = 0
    """Translate the input of every encoder but ``raw`` by a random (dy, dx) in [-s, s] elements
    (pixels, or latent cells for an MAE on latents; edges replicated), one offset per step shared by
    the generated samples and their positives, drawn from (``train.seed``, step). A convolutional
    encoder's gradient carries its stride grid; without the shift a generator can match its features
    with a texture tied to that grid (t2i_drift/models/shifted_encoder.py, docs/results.md "A random
    shift"). 0: off (the method). The positives' features then change every step and cannot be
    cached (scripts/cache_features.py --features)."""
    sure_fraction: float = 1.0
    """Drifting: the share of each step's generated samples (per process) whose gradient passes
    through the encoders other than ``raw``: those nearest their paired image in the generator's
    output space. The others learn from the raw key alone, though every sample still takes part in
    every key's field. Where the generator's output still stands for several images, a learned
    encoder's best answer is a texture, the raw key's a blur (t2i_drift/models/gradient_gate.py,
    docs/results.md "The MAE on OpenMoji"). 1.0: every sample (the method)."""
    sure_patch: int = 0
    """With ``sure_fraction`` < 1: 0 ranks whole samples; k > 0 ranks k x k cells of the generator's
    output (pixels, or latent cells) over the batch, so the encoders teach the parts of a sample
    nearest its paired image (k must divide the output side). Those are mostly background: small
    cells then leave the encoders' gradient on the background alone, which collapsed a latent run
    (docs/results.md "The paper's full recipe offline")."""
    channels_last: bool = False
    """Run the frozen convolutional encoders (MAE, EfficientNet) in channels-last memory format
    (faster convolutions on GPUs with bf16; scripts/bench_train.py measures it)."""
    compile: bool = False
    """``torch.compile`` the frozen feature encoders (the generator compiles through Accelerate:
    ``accelerate launch --dynamo_backend inductor``)."""


ObjectiveName = Literal["drifting", "regression", "flow_matching"]


@dataclass
class ObjectiveConfig:
    """What the generator is trained for (training/objectives/). The same transformer, data, text
    encoder and steps serve all three, so their results compare at equal training cost."""

    name: ObjectiveName = "drifting"
    """``drifting`` (one step, the ``drift`` section), ``regression`` (one step, plain MSE to the
    paired image: the trivial one-step baseline) or ``flow_matching`` (rectified flow, sampled in
    ``num_inference_steps`` Euler steps by FlowMatchingPipeline)."""
    time_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    """``flow_matching``: how the noise level s in (0, 1) of a training sample is drawn."""
    logit_mean: float = 0.0
    """``flow_matching``, logit-normal: s = sigmoid(n), n ~ N(logit_mean, logit_std^2)."""
    logit_std: float = 1.0
    """``flow_matching``, logit-normal: the spread of n."""
    caption_dropout: float = 0.0
    """``flow_matching``: fraction of training captions replaced by the empty caption, so the model
    also learns the unconditional flow and samples with classifier-free guidance (> 0 enables it)."""
    num_inference_steps: int = 25
    """``flow_matching``: Euler steps of the exported pipeline's sample grid."""
    regression_space: Literal["output", "features"] = "output"
    """``regression``: where the squared error is taken. ``output``: the generator's output (pixels
    or latents; the trivial baseline). ``features``: the drifting feature space of the
    ``features`` section (by default the raw key's per-location, patch and global sets), each
    key's mean squared error divided by that key's variance over the real batch and weighted as
    the drift weights it: drifting's geometry without its field (one sample per prompt, no
    kernel, no negatives, no guidance), which tells how much of a drifting gain is the space."""
    regression_loss: Literal["mse", "log_mse"] = "mse"
    """``regression``: ``mse`` is the squared error. ``log_mse`` takes the log of each key's mean
    squared error over the batch (the output space is one key), so a key's gradient is its
    residual divided by its current mean squared error: every key keeps an equal say as its error
    shrinks, whatever its units. With one positive per prompt the normalized drifting field is
    close to this gradient wherever its affinities sit at the floor (docs/method.md section 7)."""


@dataclass
class DriftConfig:
    samples_per_prompt: int = 1
    """G generated samples per prompt: the negatives of each group. 1 (with ``mask_self: false`` and
    ``alpha_max: 1``) makes each sample its own only negative: with one positive per prompt it
    trains as well as 4 at about a quarter of the step's cost (docs/results.md "The default run").
    Guidance (``alpha_max`` > 1), self-masking and several positives per prompt want G >= 2."""
    temperatures: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.2])
    """Kernel temperatures tau (relative to each key's normalized scale); their fields are summed."""
    alpha_max: float = 1.0
    """Largest guidance alpha sampled in training (the pipeline's ``guidance_scale`` range is [1, this];
    1 trains without guidance; the paper's 4 needs ``samples_per_prompt`` >= 2)."""
    alpha_power: float = 3.0
    """Alpha is drawn with density proportional to alpha^-power on [1, alpha_max]."""
    alpha_fraction_at_one: float = 0.0
    """Share of prompts trained at alpha = 1 exactly (no guidance)."""
    memory_budget_mb: float | None = 2048.0
    """Working memory of the field evaluation (MiB): groups are processed in chunks that fit. The
    result does not depend on it (t2i_drift/drifting/chunking.py); null evaluates in one chunk."""
    compile: bool = False
    """Run the field's coefficient kernel through ``torch.compile``."""
    mask_self: bool = False
    """Leave each generated sample out of its own negatives (true: the paper's Algorithm 2). With a
    single positive per prompt that makes a prompt's samples repel each other without bound
    (docs/method.md section 7), so training keeps every sample among its own negatives by default."""
    affinity_floor: float = 1e-6
    """Floor under the product of the kernel's two softmaxes (the official release's 1e-6; 0
    disables it). With ``mask_self: false`` a sample's zero distance to itself takes nearly all of
    its row softmax, every other affinity falls to the floor, and the floor makes them equal: the
    samples are then pulled to the mean of the positives instead of the nearest one
    (docs/method.md section 7). Set 0 when a prompt has several positives; keep it with one
    positive, where a prompt's near-identical samples would otherwise outweigh that positive."""
    field_norm: FieldNormScope = "key"
    """Which feature keys share the field normalization lambda_tau (docs/method.md section 3).
    ``key``: each its own (the method), so every key has the same say in the loss however close it
    already is to the data. ``map``: the sets of one feature map (``mae.s2.out/loc``, ``/mean``, ...)
    share one; ``encoder``: every key of one encoder (``mae.*``, ``mae/input_rms``) shares one, so a
    key already matched gets a small field. The raw key is an encoder of its own."""
    sibling_negatives: bool = True
    """Use a prompt's G samples as negatives of one another (the method). False makes every sample
    a group of its own, among its own negatives only: the G samples then never repel each other.
    An ablation of the within-prompt repulsion; needs ``mask_self: false`` and ``alpha_max: 1``
    (the guidance weight scales with G - 1 and vanishes)."""
    positives_per_prompt: int = 1
    """P positives per prompt (docs/method.md section 7): the paired image plus P - 1 more, drawn
    as ``positives_from`` says. 1 is the paired image alone."""
    positives_from: Literal["caption", "augment", "text_neighbours"] = "caption"
    """Where the P - 1 extra positives come from. ``caption``: other images of the prompt's caption
    (a caption-keyed bank over an in-memory data set, the paper's per-class bank; a caption with
    fewer than P images repeats them). ``augment``: random crops (and flips) of the paired image.
    ``text_neighbours``: images of the ``neighbours`` captions nearest in pooled text embedding
    (the prompt's own other images included), drawn with probability softmax(cosine similarity /
    ``neighbour_temperature``) (t2i_drift/data/text_neighbours.py)."""
    neighbours: int = 8
    """``positives_from: text_neighbours``: candidate captions per caption."""
    neighbour_temperature: float = 0.05
    """``positives_from: text_neighbours``: softmax temperature over cosine similarities."""
    positive_crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    """Area fraction (min, max) of the crops of ``positives_from: augment``."""
    positive_hflip: bool = False
    """Flip half of the augmented positives left-right (off: a flip changes left/right captions)."""


@dataclass
class OptimConfig:
    learning_rate: float = 1e-3
    """AdamW peak learning rate (constant after the warm-up)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW (beta1, beta2)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay, on matrices only (not on norms, biases and embeddings)."""
    warmup_steps: int = 100
    """Optimizer steps of the linear learning-rate warm-up."""
    warmup_start_lr: float | None = None
    """Learning rate of the first optimizer step; the warm-up is linear from it to
    ``learning_rate``. Null: ``learning_rate / warmup_steps``. The official release: 1e-6."""
    max_grad_norm: float = 2.0
    """Clip the global gradient norm to this (0: no clipping)."""
    ema_decay: float = 0.999
    """Decay of the exported EMA of the weights."""
    ema_warmup: bool = True
    """Ramp the EMA decay up as 1 - (1 + step)^(-2/3) so short runs get a useful average."""


@dataclass
class TrainConfig:
    """What the training loop (training/loop.py) reads, for every kind of run."""

    output_dir: str = "outputs/default"
    """Run folder: config, logs, checkpoints, validation grids and the exported pipeline."""
    batch_size: int = 16
    """Samples per step per process (text-to-image: prompts, each drawing
    ``drift.samples_per_prompt`` generated samples)."""
    max_steps: int = 3000
    """Optimizer steps (MAE runs: pretraining steps; the fine-tune steps come after these)."""
    seed: int = 0
    """Seed of every random draw (data order, noise, initialization)."""
    mixed_precision: Literal["no", "bf16", "fp16"] | None = None
    """Autocast precision. Null: the launcher's choice (``accelerate config`` or ``accelerate launch
    --mixed_precision``, default no); a value here overrides the launcher."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step. Each micro-batch computes its own drifting field (its
    prompts' groups and in-batch negatives): accumulation averages k fields of ``batch_size``
    prompts, it is not one field over k x ``batch_size`` prompts (docs/method.md)."""
    checkpointing_steps: int = 500
    """Save a resumable checkpoint every N optimizer steps (and at the end)."""
    checkpoints_total_limit: int | None = 2
    """Keep only the newest N checkpoints; null keeps all."""
    resume_from_checkpoint: str | None = None
    """A checkpoint folder, or ``latest`` for the newest complete one of the run in ``output_dir``
    (none yet: start at step 0)."""
    overwrite_output_dir: bool = False
    """Start a new run in an ``output_dir`` that holds another run. Its checkpoints stay (rotation
    and ``latest`` only count the new run's) and its metrics.jsonl is kept under another name;
    ``pipeline/`` is replaced at export. Without it such a folder is refused."""
    log_every: int = 10
    """Average the step statistics over N steps per log line (metrics.jsonl and trackers)."""
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = field(default_factory=list)
    """Trackers (through Accelerate) that receive the logged statistics and validation grids;
    ``tensorboard`` writes to ``<output_dir>/logs``. Empty: metrics.jsonl only."""
    tracker_project: str = "t2i_drift"
    """Project name the trackers file the run under."""
    validation_prompts: list[str] = field(default_factory=list)
    """Prompts rendered every ``validation_steps`` as a labelled grid (PNG under
    ``<output_dir>/validation/`` and the trackers). Empty: no validation."""
    validation_steps: int = 250
    """Optimizer steps between validation grids (and one at the end)."""
    num_validation_images: int = 4
    """Images per validation prompt (one column each)."""
    push_to_hub: bool = False
    """Upload the exported pipeline (hub layout) to ``hub_model_id`` when training ends."""
    hub_model_id: str | None = None
    """``owner/name`` of the Hub repository ``push_to_hub`` uploads to."""
    hub_private: bool = False
    """Create the Hub repository private."""


@dataclass
class EvalConfig:
    sample_prompts: list[str] = field(
        default_factory=lambda: [
            "teapot",
            "red apple",
            "grinning face",
            "rocket",
            "dog face",
            "sun",
            "France",
            "pizza",
        ]
    )
    """Prompts of the exported pipeline's sample grid and model-card widget."""
    samples_per_grid_prompt: int = 4
    """Images per prompt (columns) of the sample grid."""
    guidance_scale: float = 1.0
    """Guidance scale of the sample grid and validation images."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a text-to-image recipe (None: the built-in defaults) and apply dotted overrides."""
    return load_tree(Config, path, overrides, validate_config)


def config_from_dict(values: dict[str, Any], source: str = "config") -> Config:
    """A Config from nested dicts (e.g. the one saved in a checkpoint); ``source`` names the origin."""
    return _tree_from_dict(values, Config, source)


def validate_config(cfg: Config, source: str = "config") -> None:
    """Range checks that types alone cannot express; errors name the dotted key."""
    d = cfg.drift
    # A sample may be its own only negative when it is kept among them and no guidance needs more.
    self_negative_only = not d.mask_self and d.alpha_max == 1.0
    checks = [
        (
            "drift.samples_per_prompt",
            d.samples_per_prompt >= 2 or (d.samples_per_prompt == 1 and self_negative_only),
            "must be >= 2 (the drift needs negatives); 1 only with drift.mask_self=false and "
            "drift.alpha_max=1",
        ),
        ("drift.positives_per_prompt", d.positives_per_prompt >= 1, "must be >= 1"),
        ("drift.affinity_floor", 0.0 <= d.affinity_floor < 1.0, "must be in [0, 1)"),
        (
            "drift.sibling_negatives",
            d.sibling_negatives or self_negative_only,
            "false needs drift.mask_self=false and drift.alpha_max=1",
        ),
        ("drift.neighbours", d.neighbours >= 1, "must be >= 1"),
        ("drift.neighbour_temperature", d.neighbour_temperature > 0, "must be > 0"),
        (
            "drift.positive_crop_scale",
            len(d.positive_crop_scale) == 2 and 0 < d.positive_crop_scale[0] <= d.positive_crop_scale[1] <= 1,
            "must be [min, max] with 0 < min <= max <= 1",
        ),
        (
            "drift.temperatures",
            len(d.temperatures) > 0 and all(t > 0 for t in d.temperatures),
            "must be a non-empty list of positive numbers",
        ),
        ("drift.alpha_max", d.alpha_max >= 1.0, "must be >= 1 (alpha = 1 is no guidance)"),
        ("drift.alpha_fraction_at_one", 0.0 <= d.alpha_fraction_at_one <= 1.0, "must be in [0, 1]"),
        (
            "drift.memory_budget_mb",
            d.memory_budget_mb is None or d.memory_budget_mb > 0,
            "must be positive or null",
        ),
        *train_checks(cfg.train),
        (
            "train.validation_prompts",
            not cfg.train.validation_prompts or all(p.strip() for p in cfg.train.validation_prompts),
            "must not contain empty prompts",
        ),
        ("optim.learning_rate", 0 < cfg.optim.learning_rate <= 1, "must be in (0, 1]"),
        (
            "optim.betas",
            len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas),
            "must be two values in [0, 1)",
        ),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0, "must be >= 0"),
        ("optim.warmup_steps", cfg.optim.warmup_steps >= 0, "must be >= 0"),
        ("optim.max_grad_norm", cfg.optim.max_grad_norm >= 0, "must be >= 0 (0: no clipping)"),
        ("optim.ema_decay", 0 <= cfg.optim.ema_decay < 1, "must be in [0, 1)"),
        ("data.resolution", cfg.data.resolution >= 1, "must be >= 1"),
        (
            "data.resolution",
            cfg.model.vae is not None or cfg.data.resolution % cfg.model.patch_size == 0,
            f"must be divisible by model.patch_size={cfg.model.patch_size} (pixel space)",
        ),
        ("model.patch_size", cfg.model.patch_size >= 1, "must be >= 1"),
        ("data.val_fraction", 0 <= cfg.data.val_fraction < 1, "must be in [0, 1)"),
        ("data.min_size", cfg.data.min_size >= 1, "must be >= 1"),
        (
            "data.max_samples",
            cfg.data.max_samples is None or cfg.data.max_samples >= 1,
            "must be >= 1 or null",
        ),
        ("eval.sample_prompts", len(cfg.eval.sample_prompts) > 0, "must name at least one prompt"),
        (
            "eval.sample_prompts",
            all(p.strip() for p in cfg.eval.sample_prompts),
            "must not contain empty prompts",
        ),
        ("eval.samples_per_grid_prompt", cfg.eval.samples_per_grid_prompt >= 1, "must be >= 1"),
        *_guidance_checks(cfg),
        (
            "optim.warmup_start_lr",
            cfg.optim.warmup_start_lr is None or 0 < cfg.optim.warmup_start_lr <= cfg.optim.learning_rate,
            "must be null or in (0, optim.learning_rate]",
        ),
        ("objective.logit_std", cfg.objective.logit_std > 0, "must be > 0"),
        ("objective.caption_dropout", 0.0 <= cfg.objective.caption_dropout < 1.0, "must be in [0, 1)"),
        ("objective.num_inference_steps", cfg.objective.num_inference_steps >= 1, "must be >= 1"),
        (
            "data.path",
            cfg.data.name not in ("hf", "webdataset") or bool(cfg.data.path),
            "must be set when data.name is hf or webdataset",
        ),
        (
            "data.path",
            cfg.data.name != "webdataset"
            or cfg.data.allow_shell
            or not any(part.strip().startswith("pipe:") for part in (cfg.data.path or "").split("::")),
            "a pipe: URL runs a shell command for every shard; set data.allow_shell=true to allow it",
        ),
        (
            "data.shapes_omit",
            set(cfg.data.shapes_omit) <= set(CAPTION_OMITS)
            and len(set(cfg.data.shapes_omit)) == len(cfg.data.shapes_omit),
            f"must list distinct attributes among {list(CAPTION_OMITS)}",
        ),
        (
            "data.shapes_omit",
            cfg.data.name == "shapes" or not cfg.data.shapes_omit,
            "applies to data.name=shapes only",
        ),
        ("data.shuffle_buffer", cfg.data.shuffle_buffer >= 0, "must be >= 0"),
        ("data.num_workers", cfg.data.num_workers >= 0, "must be >= 0"),
        ("data.caption_columns", len(cfg.data.caption_columns) > 0, "must name at least one column"),
        (
            "features",
            any(getattr(cfg.features, name) is not None for name in FEATURE_ENCODERS),
            f"must enable at least one of {list(FEATURE_ENCODERS)}",
        ),
        ("features.mae.path", cfg.features.mae is None or bool(cfg.features.mae.path), "must be set"),
        *_feature_option_checks(cfg.features),
        ("features.hub.name", cfg.features.hub is None or bool(cfg.features.hub.name), "must be set"),
        ("features.vae.path", cfg.features.vae is None or bool(cfg.features.vae.path), "must be set"),
        (
            "features.vae.flat",
            cfg.features.vae is None or not cfg.features.vae.flat or "latent" in cfg.features.vae.maps,
            "needs 'latent' in features.vae.maps",
        ),
        (
            "text.token_sources",
            cfg.text.encoder_2 is not None or "text_encoder_2" not in cfg.text.token_sources,
            "names text_encoder_2 but text.encoder_2 is not set",
        ),
        (
            "text.pooled_sources",
            cfg.text.encoder_2 is not None or "text_encoder_2" not in cfg.text.pooled_sources,
            "names text_encoder_2 but text.encoder_2 is not set",
        ),
        ("text.token_sources", len(cfg.text.token_sources) > 0, "must name at least one encoder"),
        *_open_clip_checks(cfg.text),
        (
            "model.attention_backend",
            cfg.model.attention_backend is None or cfg.model.attention_backend in _attention_backends(),
            f"must be null or one of diffusers' attention backends {_attention_backends()}",
        ),
        ("text.pooled_sources", len(cfg.text.pooled_sources) > 0, "must name at least one encoder"),
    ]
    for name, default in (("regression_space", "output"), ("regression_loss", "mse")):
        checks.append(
            (
                f"objective.{name}",
                getattr(cfg.objective, name) == default or cfg.objective.name == "regression",
                "applies to objective.name=regression only",
            )
        )
    checks.append(
        (
            "features.sure_fraction",
            cfg.features.sure_fraction == 1.0 or cfg.objective.name == "drifting",
            "applies to objective.name=drifting only",
        )
    )
    for name in FEATURE_ENCODERS:
        encoder = getattr(cfg.features, name)
        checks.append((f"features.{name}.weight", encoder is None or encoder.weight >= 0, "must be >= 0"))
    check_ranges(cfg, source, checks)


def _attention_backends() -> list[str]:
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [backend.value for backend in AttentionBackendName]


def _guidance_checks(cfg: Config) -> list[tuple[str, bool, str]]:
    """``eval.guidance_scale`` must be a value the exported pipeline accepts."""
    g, name = cfg.eval.guidance_scale, cfg.objective.name
    if name == "drifting":
        return [
            (
                "eval.guidance_scale",
                1 <= g <= cfg.drift.alpha_max,
                f"must be in [1, drift.alpha_max={cfg.drift.alpha_max}]",
            )
        ]
    if name == "flow_matching":
        return [
            (
                "eval.guidance_scale",
                g == 1 or (g > 1 and cfg.objective.caption_dropout > 0),
                "must be 1, or > 1 with objective.caption_dropout > 0 (classifier-free guidance)",
            )
        ]
    return [("eval.guidance_scale", g == 1, "must be 1 (regression learns no guidance)")]


def train_checks(t: TrainConfig) -> list[tuple[str, bool, str]]:
    """Checks of the ``train`` section, shared by every run type."""
    hub_id = t.hub_model_id or ""
    return [
        ("train.output_dir", bool(t.output_dir.strip()), "must be a folder path, got an empty string"),
        ("train.batch_size", t.batch_size >= 1, "must be >= 1"),
        ("train.max_steps", t.max_steps >= 1, "must be >= 1"),
        ("train.checkpointing_steps", t.checkpointing_steps >= 1, "must be >= 1"),
        (
            "train.checkpoints_total_limit",
            t.checkpoints_total_limit is None or t.checkpoints_total_limit >= 1,
            "must be >= 1 or null (keep all)",
        ),
        ("train.log_every", t.log_every >= 1, "must be >= 1"),
        ("train.gradient_accumulation_steps", t.gradient_accumulation_steps >= 1, "must be >= 1"),
        ("train.validation_steps", t.validation_steps >= 1, "must be >= 1"),
        ("train.num_validation_images", t.num_validation_images >= 1, "must be >= 1"),
        (
            "train.hub_model_id",
            not t.push_to_hub or (hub_id.count("/") == 1 and all(hub_id.split("/"))),
            "must be owner/name when train.push_to_hub is true",
        ),
    ]


def _open_clip_checks(text: TextConfig) -> list[tuple[str, bool, str]]:
    """``pretrained`` and ``layer`` mean something for open_clip encoders only."""
    checks = []
    for suffix, encoder, pretrained, layer in (
        ("", text.encoder, text.pretrained, text.layer),
        ("_2", text.encoder_2, text.pretrained_2, text.layer_2),
    ):
        is_open_clip = encoder is not None and encoder.startswith(OPEN_CLIP_PREFIX)
        checks.append(
            (
                f"text.pretrained{suffix}",
                is_open_clip or pretrained is None,
                "applies to open_clip: encoders only",
            )
        )
        checks.append(
            (f"text.layer{suffix}", is_open_clip or layer == "last", "applies to open_clip: encoders only")
        )
    return checks


def _feature_option_checks(f: FeaturesConfig) -> list[tuple[str, bool, str]]:
    """Checks of the feature-set options whose value can be wrong beyond its type."""
    mae = f.mae
    normalizes_a_stage = mae is None or mae.maps is None or any(m.endswith(".out") for m in mae.maps)
    return [
        (
            # Size 1 would repeat the per-location set and give a constant std (a key with no
            # spread, whose normalization scale is 0).
            "features.patch_sizes",
            all(k >= 2 for k in f.patch_sizes),
            "must be integers >= 2",
        ),
        (
            "features.mae.keep_single_cell_patches",
            mae is None or not mae.keep_single_cell_patches or len(f.patch_sizes) > 0,
            "needs patch sets: features.patch_sizes is empty",
        ),
        (
            "features.mae.stage_norm",
            mae is None or not mae.stage_norm or normalizes_a_stage,
            "normalizes stage outputs, but features.mae.maps names none (s<i>.out)",
        ),
        ("features.random_shift", f.random_shift >= 0, "must be >= 0 (0: off)"),
        (
            "features.random_shift",
            f.random_shift == 0 or any(getattr(f, name) is not None for name in LEARNED_ENCODERS),
            "shifts the input of the effnet / mae / hub / vae encoders, but none is configured",
        ),
        ("features.sure_fraction", 0.0 < f.sure_fraction <= 1.0, "must be in (0, 1] (1: every sample)"),
        (
            "features.sure_fraction",
            f.sure_fraction == 1.0 or any(getattr(f, name) is not None for name in LEARNED_ENCODERS),
            "gates the effnet / mae / hub / vae encoders' gradient, but none is configured",
        ),
        ("features.sure_patch", f.sure_patch >= 0, "must be >= 0 (0: one gate per sample)"),
        (
            "features.sure_patch",
            f.sure_patch == 0 or f.sure_fraction < 1.0,
            "applies with features.sure_fraction < 1",
        ),
    ]
