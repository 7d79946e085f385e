"""Run configuration: a tree of typed dataclasses, loaded from YAML, overridden as ``section.key=value``.

Loading is strict: an unknown section or key, or a value of the wrong type, raises a
``ConfigError`` that names the file (or override) and the dotted key at fault.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml


class ConfigError(ValueError):
    """A config file or override names an unknown key or has a value of the wrong type."""


@dataclass
class DataConfig:
    name: Literal["openmoji", "shapes", "hf", "webdataset"] = "openmoji"
    """``openmoji`` (built-in captioned emoji), ``shapes`` (built-in compositional set with a
    checker; t2i_drift/data/shapes.py), ``hf`` (``data.path`` through HF datasets) or
    ``webdataset`` (tar shards at ``data.path``; t2i_drift/data/webdataset.py)."""
    path: str | None = None
    """``hf``: a hub dataset name, a local imagefolder (images + metadata.jsonl/csv), or parquet /
    arrow files (a glob works). ``webdataset``: shard URL(s): a path, a brace pattern
    ``shards/{000000..000099}.tar``, ``a::b`` lists, ``pipe:<command>`` or http(s) URLs."""
    split: str = "train"
    image_column: str = "image"
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
    resampled: bool = False
    """``webdataset`` only: draw shards with replacement, forever (no epochs; the usual choice for
    multi-node runs, where shards cannot be split evenly)."""
    shuffle_buffer: int = 1000
    """Streaming sources: samples held in the shuffle buffer (0: stream order)."""
    min_size: int = 8
    """``hf`` and ``webdataset``: images whose shorter side is smaller are skipped (and reported)."""
    resolution: int = 32
    val_fraction: float = 0.05
    """Share of captions held out (by caption hash) as the validation split."""
    max_samples: int | None = None
    """Keep only the first N training pairs (tests, quick runs); streamed ``hf``: per process."""
    num_workers: int = 0
    renders_per_scene: int = 4
    """``shapes`` only: jittered renders of each scene (its 788 training scenes x this)."""


@dataclass
class ModelConfig:
    preset: str = "XS"
    """Named size from ``DRIFTING_PRESETS`` (tiny, XS, S, M, B, L)."""
    patch_size: int = 4
    overrides: dict[str, Any] = field(default_factory=dict)
    """Any other ``DriftingTransformer2DModel`` config argument, e.g. {num_layers: 8}."""
    vae: str | None = None
    """A diffusers ``AutoencoderKL`` (hub id or local folder): the generator then works in its latent
    space (scaling and shift factors from the VAE config) and the pipeline decodes."""
    vae_subfolder: str | None = None
    """The VAE's folder inside a pipeline repository, e.g. ``vae``."""


TextEncoderName = Literal["text_encoder", "text_encoder_2"]
PoolingName = Literal["auto", "mean", "cls", "pooler"]


@dataclass
class TextConfig:
    encoder: str = "minilm"
    """``minilm`` (offline, built in) or a hub id / local folder of a transformers text encoder
    (BERT-like, CLIP, CLIP with projection, T5): the pipeline's ``text_encoder``."""
    subfolder: str | None = None
    """The encoder's folder inside a pipeline repository, e.g. ``text_encoder``."""
    max_length: int = 32
    pooling: PoolingName = "auto"
    """``auto``: CLIP's pooled output for CLIP, the L2-normalized masked mean otherwise."""
    encoder_2: str | None = None
    """An optional second encoder (``text_encoder_2``), e.g. CLIP next to a T5."""
    subfolder_2: str | None = None
    max_length_2: int = 77
    pooling_2: PoolingName = "auto"
    token_sources: list[TextEncoderName] = field(default_factory=lambda: ["text_encoder"])
    """Encoders whose token embeddings condition the generator (concatenated along the sequence)."""
    pooled_sources: list[TextEncoderName] = field(default_factory=lambda: ["text_encoder"])
    """Encoders whose pooled embeddings enter the adaLN vector (concatenated along channels)."""
    cache_dir: str | None = "auto"
    """On-disk embedding cache: ``auto`` = $HF_HOME/t2i_drift/text_embeddings; null disables it."""


@dataclass
class FeaturesConfig:
    effnet: bool = False
    """Use frozen EfficientNet-Lite0 multi-scale features (off by default: at 32 px they drive the
    generator to adversarial per-patch textures, see README "Feature spaces")."""
    effnet_blocks: list[int] = field(default_factory=lambda: [0, 2, 4, 10])
    effnet_input_size: int = 32
    patch_sizes: list[int] = field(default_factory=lambda: [2, 4])
    per_location: bool = True
    """Include set (a), per-location vectors, of every EfficientNet map."""
    raw: bool = True
    """The flattened generator output as one more feature key."""
    effnet_weight: float = 1.0
    """Loss weight of every EfficientNet key (METHOD.md: 1, a plain sum over keys)."""
    raw_weight: float = 1.0
    """Loss weight of the raw-output key."""
    mae: str | None = None
    """A trained ResNetMAE (scripts/train_mae.py output folder or its ``mae/`` subfolder), the
    paper's encoder: its ``in_channels`` must match the generator's space (3 for pixels, the VAE's
    latent channels with ``model.vae``)."""
    mae_maps: list[str] | None = None
    """MAE feature maps to use (``s1.b2``, ``s1.out``, ..., ``s4.out``); null: all nine."""
    mae_weight: float = 1.0
    """Loss weight of every MAE key."""
    hub: str | None = None
    """Any transformers vision backbone (``AutoBackbone``: ConvNeXt-V2, DINOv2, ...) by hub id or
    local folder, frozen, e.g. ``facebook/convnextv2-tiny-22k-224``."""
    hub_out_features: list[str] | None = None
    """The backbone's stages to use (``stage1``...); null: every stage but the stem."""
    hub_input_size: int | None = None
    """Side the images are resized to for the backbone; null: from its preprocessor config."""
    hub_weight: float = 1.0
    """Loss weight of every hub-backbone key."""
    decode_latents: bool = False
    """With ``model.vae``: the pixel-space encoders (EfficientNet, hub backbone) see the
    VAE-decoded latents (generated and real alike; the decoder is frozen but differentiable)."""


@dataclass
class DriftConfig:
    samples_per_prompt: int = 4
    """G generated samples per prompt (>= 2): the self-masked negatives of each group."""
    temperatures: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.2])
    alpha_max: float = 4.0
    alpha_power: float = 3.0
    alpha_fraction_at_one: float = 0.0
    memory_budget_mb: float | None = 2048.0
    """Working memory of the field evaluation (MiB): groups are processed in chunks that fit. The
    result does not depend on it (t2i_drift/drifting/chunking.py); null evaluates in one chunk."""
    compile: bool = False
    """Run the field's coefficient kernel through ``torch.compile``."""


@dataclass
class OptimConfig:
    learning_rate: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_grad_norm: float = 2.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    """Ramp the EMA decay up as 1 - (1 + step)^(-2/3) so short runs get a useful average."""


@dataclass
class TrainConfig:
    output_dir: str = "outputs/default"
    batch_size: int = 16
    """Prompts per step per process; each prompt draws ``drift.samples_per_prompt`` samples."""
    max_steps: int = 1000
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    checkpointing_steps: int = 250
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    """A checkpoint folder, or ``latest`` for the newest under ``output_dir``."""
    log_every: int = 10
    gradient_checkpointing: bool = False


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
    samples_per_grid_prompt: int = 4
    guidance_scale: float = 1.0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
#                                     strict loading
# ----------------------------------------------------------------------------------------------


def _check_value(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` converted to ``annotation`` (int -> float only) or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {annotation}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it spells.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {annotation}")


def _merge_into(obj: Any, values: dict[str, Any], where: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown key {dotted!r}; valid keys here: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge_into(current, value, dotted)
        else:
            setattr(obj, key, _check_value(value, hints[key], dotted))


# Any config tree of dataclasses (Config, or another run type's, e.g. MAEConfig).
ConfigT = TypeVar("ConfigT")


def config_from_dict(values: dict[str, Any], source: str = "config", cls: type[ConfigT] = Config) -> ConfigT:
    """Build a ``cls`` (default Config) from nested dicts; ``source`` names the origin in errors."""
    cfg = cls()
    try:
        _merge_into(cfg, values or {}, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return cfg


def apply_overrides(cfg: ConfigT, overrides: list[str]) -> ConfigT:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``0.5``, ``[1, 2]``, ``null``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        if len(keys) < 2:
            raise ConfigError(f"override {item!r} must name a section and a key, e.g. train.max_steps=10")
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
        nested: dict[str, Any] = value
        for key in reversed(keys):
            nested = {key: nested}
        try:
            _merge_into(cfg, nested, "")
        except ConfigError as err:
            raise ConfigError(f"override {item!r}: {err}") from None
    return cfg


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    cls: type[ConfigT] = Config,
    validate: Callable[[Any, str], None] | None = None,
) -> ConfigT:
    """Load a YAML recipe (None: the built-in defaults) and apply dotted overrides.

    ``cls`` is the config tree (default: the text-to-image Config) and ``validate(cfg, source)`` its
    range checks (default: :func:`validate_config`, which expects a Config).
    """
    if path is None:
        cfg = cls()
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        cfg = config_from_dict(values or {}, source=str(path), cls=cls)
    cfg = apply_overrides(cfg, overrides or [])
    (validate or validate_config)(cfg, "config" if path is None else str(path))
    return cfg


def validate_config(cfg: Config, source: str = "config") -> None:
    """Range checks that types alone cannot express; errors name the dotted key."""
    d = cfg.drift
    checks = [
        ("drift.samples_per_prompt", d.samples_per_prompt >= 2, "must be >= 2 (the drift needs negatives)"),
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
        ("train.batch_size", cfg.train.batch_size >= 1, "must be >= 1"),
        (
            "data.path",
            cfg.data.name not in ("hf", "webdataset") or bool(cfg.data.path),
            "must be set when data.name is hf or webdataset",
        ),
        ("data.shuffle_buffer", cfg.data.shuffle_buffer >= 0, "must be >= 0"),
        ("data.num_workers", cfg.data.num_workers >= 0, "must be >= 0"),
        ("data.caption_columns", len(cfg.data.caption_columns) > 0, "must name at least one column"),
        (
            "features.effnet",
            cfg.model.vae is None or not cfg.features.effnet or cfg.features.decode_latents,
            "needs pixels: with model.vae set features.decode_latents=true (or features.effnet=false)",
        ),
        (
            "features.hub",
            cfg.model.vae is None or cfg.features.hub is None or cfg.features.decode_latents,
            "needs pixels: with model.vae set features.decode_latents=true (or features.hub=null)",
        ),
        (
            "features.decode_latents",
            cfg.model.vae is not None or not cfg.features.decode_latents,
            "needs model.vae (there are no latents to decode in a pixel-space run)",
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
        ("text.pooled_sources", len(cfg.text.pooled_sources) > 0, "must name at least one encoder"),
    ]
    for key, ok, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {key} = {_lookup(cfg, key)!r} {message}")


def _lookup(cfg: Any, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def save_config(cfg: Any, path: str | Path) -> None:
    """Write any config tree of dataclasses (Config, MAEConfig) as YAML."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
