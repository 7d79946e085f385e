"""The model card of an exported pipeline folder, rendered from what the folder holds.

A pipeline folder carries everything its card needs, so the card can be rendered again at any time
(after ``scripts/evaluate.py --update-card`` adds metrics, or by :func:`t2i_drift.hub.write_hub_layout`
for the Hub layout, whose usage snippets differ):

    training_config.yaml   the resolved run config
    export_info.json       steps, generator size, where and how long it trained, the sample prompts
    metrics.json           optional: name -> value, with the command that measured them
    samples.png            labelled grid: one row per sample prompt, one column per seed
    images/sample_K.png    one upscaled image per sample prompt (the Hub widget)

The template is package data (``t2i_drift/templates/model_card.md``), so a regular (non-editable)
install renders cards too.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData
from PIL import Image, ImageDraw, ImageFont

from t2i_drift.data.openmoji import OPENMOJI_ATTRIBUTION
from t2i_drift.text.open_clip_text import OPEN_CLIP_PREFIX

EXPORT_INFO = "export_info.json"
METRICS = "metrics.json"
SAMPLE_GRID = "samples.png"
WIDGET_DIR = "images"
CONFIG_FILE = "training_config.yaml"
CARD = "README.md"

OBJECTIVE_KINDS = {
    "drifting": "one-step generator",
    "regression": "one-step regression baseline",
    "flow_matching": "flow-matching baseline",
}
OBJECTIVE_TAGS = {
    "drifting": ["drifting", "one-step"],
    "regression": ["one-step"],
    "flow_matching": ["flow-matching"],
}
TEXT_ENCODER_HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def template_text() -> str:
    """The card template shipped inside the package."""
    return resources.files("t2i_drift").joinpath("templates/model_card.md").read_text()


# ---------------------------------------------------------------------------------------------
#                                         Images
# ---------------------------------------------------------------------------------------------


def labelled_grid(rows: list[list[Image.Image]], labels: list[str], cell: int = 128) -> Image.Image:
    """One row per label: the label on a strip above ``len(row)`` images, each upscaled to
    ``cell`` x ``cell`` with nearest-neighbour (a 32 px sample stays pixel-exact, just bigger)."""
    if len(rows) != len(labels):
        raise ValueError(f"got {len(rows)} rows of images but {len(labels)} labels")
    font = ImageFont.load_default(size=max(10, cell // 9))
    strip = int(font.size * 1.6)
    cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (cols * cell, len(rows) * (cell + strip)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (images, label) in enumerate(zip(rows, labels, strict=True)):
        top = r * (cell + strip)
        text = label
        while text and draw.textlength(text, font=font) > grid.width - 8:
            text = text[:-2]
        draw.text(
            (4, top + (strip - font.size) // 2),
            text if text == label else text + "…",
            fill="black",
            font=font,
        )
        for c, image in enumerate(images):
            grid.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (c * cell, top + strip))
    return grid


def upscaled(image: Image.Image, size: int = 256) -> Image.Image:
    """Nearest-neighbour upscale to at least ``size`` px (a widget thumbnail)."""
    factor = max(1, -(-size // max(image.size)))
    return image.convert("RGB").resize((image.width * factor, image.height * factor), Image.NEAREST)


# ---------------------------------------------------------------------------------------------
#                                          Card
# ---------------------------------------------------------------------------------------------


def _is_hub_id(path: str | None) -> bool:
    """``owner/name`` that is not a local path: how a Hub dataset is named in ``data.path``."""
    if not path or Path(path).exists() or path.startswith((".", "/", "~")) or "://" in path:
        return False
    parts = path.split("/")
    return len(parts) == 2 and all(parts)


def _dataset(data: dict[str, Any]) -> tuple[str, str, list[str] | None]:
    """(description, attribution, Hub dataset ids) of the training data."""
    name, path = data["name"], data.get("path")
    if name == "openmoji":
        return (
            "OpenMoji emoji rendered offline, their CLDR names as captions",
            OPENMOJI_ATTRIBUTION,
            None,
        )
    if name == "shapes":
        return (
            "t2i_drift's built-in compositional shapes (coloured shapes on grey, captions naming "
            "count, colour, shape, size and position)",
            "The training images are synthetic, rendered by t2i_drift; no third-party data.",
            None,
        )
    if name == "photos":
        return (
            "crops of the sample photographs shipped with scikit-image, captioned by subject",
            "The training images are crops of scikit-image's sample data (skimage.data); see its "
            "documentation for each photograph's source and license.",
            None,
        )
    hub = [path] if name == "hf" and _is_hub_id(path) else None
    where = f"the Hub dataset [{path}](https://huggingface.co/datasets/{path})" if hub else f"`{path}`"
    kind = "webdataset shards" if name == "webdataset" else "an image-caption dataset"
    return (
        f"{kind}: {where}",
        f"Trained on {where}; its license and attribution apply to this model's outputs.",
        hub,
    )


def _limitations(config: dict[str, Any], info: dict[str, Any]) -> list[str]:
    objective = config.get("objective", {}).get("name", "drifting")
    drift = config["drift"]
    lines = []
    if objective == "drifting" and drift.get("positives_per_prompt", 1) == 1:
        lines.append(
            "Every caption had one positive, its paired image, during training, so the images of "
            "one prompt vary little from seed to seed."
        )
    if objective == "regression":
        lines.append("Regression learns the mean image of a caption: seeds give nearly the same image.")
    lines.append("The model only knows the vocabulary of its training captions.")
    if objective == "drifting":
        lines.append(
            f"`guidance_scale` is limited to the range it was trained on, [1, {drift['alpha_max']}]."
        )
    params, res = info.get("generator_params", 0), config["data"]["resolution"]
    if params < 50e6 or res <= 64:
        lines.append(
            f"A small generator ({params / 1e6:.1f}M parameters) at {res}x{res} trained for "
            f"{info.get('steps', '?')} steps: a reference for the method and the tooling, not a "
            "production model."
        )
    return lines


def _trained_on(info: dict[str, Any]) -> str:
    parts = []
    if info.get("device"):
        parts.append(
            f"{info['num_processes']} x {info['device']}"
            if info.get("num_processes", 1) > 1
            else info["device"]
        )
    if info.get("train_wall_s"):
        minutes = info["train_wall_s"] / 60
        parts.append(f"{minutes:.0f} min" if minutes >= 1 else f"{info['train_wall_s']:.0f} s")
    return ", ".join(parts)


def render_model_card(
    config: dict[str, Any],
    info: dict[str, Any],
    *,
    repo_or_path: str,
    hub_layout: bool = False,
    metrics: dict[str, Any] | None = None,
    sample_grid: str | None = SAMPLE_GRID,
    widget_images: list[str] | None = None,
) -> ModelCard:
    """The card of a pipeline trained with ``config`` (the resolved run config as a dict).

    Args:
        info: the export's facts (``export_info.json``): steps, generator_params, prompts,
            guidance_scale and optionally device, num_processes, train_wall_s.
        repo_or_path: what the usage snippets load (a hub id or a folder).
        hub_layout: the folder is in the Hub layout: snippets pass ``trust_remote_code=True`` and
            show diffusers' ``DiffusionPipeline`` entry point.
        metrics: ``metrics.json`` content: {"metrics": {name: value}, "command": str, ...}.
        widget_images: one image path per ``info["prompts"]`` entry (the Hub widget).
    """
    data, text = config["data"], config["text"]
    objective = config.get("objective", {}).get("name", "drifting")
    prompts = list(info.get("prompts") or config["eval"]["sample_prompts"])
    call_args = {
        "drifting": f"guidance_scale={info.get('guidance_scale', 1.0)}",
        "regression": "",
        "flow_matching": f"num_inference_steps={config.get('objective', {}).get('num_inference_steps', 25)}",
    }[objective]
    text_encoder = TEXT_ENCODER_HUB_IDS.get(text["encoder"], text["encoder"])
    if text_encoder.startswith(OPEN_CLIP_PREFIX):  # the model name alone does not say which weights
        text_encoder += f" ({text.get('pretrained') or 'its own checkpoint'})"
    description, attribution, datasets = _dataset(data)
    widget = None
    if widget_images:
        widget = [{"text": p, "output": {"url": url}} for p, url in zip(prompts, widget_images, strict=False)]
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-image",
        license="cc-by-sa-4.0" if data["name"] == "openmoji" else "other",
        tags=["text-to-image", *OBJECTIVE_TAGS[objective], "t2i_drift", "diffusers"],
        datasets=datasets,
        # No ``base_model``: the generator trains from scratch; the frozen text encoder only conditions it.
        text_encoder=text_encoder,
        widget=widget,
    )
    metric_values = (metrics or {}).get("metrics") or {}
    return ModelCard.from_template(
        card_data,
        template_str=template_text(),
        model_name=f"t2i_drift {OBJECTIVE_KINDS[objective]} ({data['name']}, {data['resolution']}px)",
        repo_or_path=repo_or_path,
        hub_layout=hub_layout,
        objective=objective,
        pipeline_class="FlowMatchingPipeline" if objective == "flow_matching" else "DriftingPipeline",
        prompt=prompts[0] if prompts else "a photo",
        call_args=call_args,
        cfg=config.get("objective", {}).get("caption_dropout", 0) > 0,
        guidance_range=f"[1, {config['drift']['alpha_max']}]",
        dataset_description=description,
        text_encoder=text_encoder,
        max_length=text["max_length"],
        pooling=text["pooling"],
        generator_params=f"{info.get('generator_params', 0) / 1e6:.2f}M",
        resolution=data["resolution"],
        space="pixels" if config["model"].get("vae") is None else f"VAE latents ({config['model']['vae']})",
        steps=info.get("steps", "?"),
        trained_on=_trained_on(info),
        metrics={k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in metric_values.items()},
        metrics_intro=(metrics or {}).get("description", "Measured by `scripts/evaluate.py`:"),
        metrics_command=(metrics or {}).get("command"),
        limitations=_limitations(config, info),
        config_yaml=yaml.safe_dump(config, sort_keys=False).strip(),
        attribution=attribution,
        sample_grid=sample_grid,
        samples_caption=(
            f"One row per prompt, one column per seed (noise seed {info.get('seed', 0)}"
            + (f", guidance scale {info.get('guidance_scale', 1.0)}" if objective == "drifting" else "")
            + "), upscaled with nearest-neighbour."
        ),
    )


def flatten_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of a ``scripts/evaluate.py`` result as ``name -> value`` rows: every numeric
    leaf of each run, prefixed by its NFE when the result has several."""
    rows: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}{key}.", sub)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows[prefix.rstrip(".")] = float(value)

    runs = result.get("runs", [])
    for run in runs:
        prefix = f"nfe{run.get('nfe', 1)}." if len(runs) > 1 else ""
        for key, value in run.items():
            if key not in ("nfe", "transformer_passes_per_image", "images"):
                walk(f"{prefix}{key}.", value)
    return rows


def write_model_card(
    pipeline_dir: str | Path, *, repo_or_path: str | None = None, hub_layout: bool = False
) -> Path:
    """Render ``pipeline_dir``/README.md from the folder's config, export info, metrics and images.

    ``repo_or_path``: what the snippets load; remembered in ``export_info.json`` so that a later
    re-render (new metrics) keeps it (default: the remembered value, else the folder as given)."""
    folder = Path(pipeline_dir)
    for name in (CONFIG_FILE, EXPORT_INFO):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} is missing: {folder} is not a t2i_drift pipeline export"
            )
    config = yaml.safe_load((folder / CONFIG_FILE).read_text())
    info = json.loads((folder / EXPORT_INFO).read_text())
    if repo_or_path is not None and info.get("repo_or_path") != repo_or_path:
        info["repo_or_path"] = repo_or_path
        (folder / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    repo_or_path = info.get("repo_or_path") or str(pipeline_dir)
    metrics = json.loads((folder / METRICS).read_text()) if (folder / METRICS).is_file() else None
    widget = sorted(
        (p for p in (folder / WIDGET_DIR).glob("sample_*.png")), key=lambda p: int(p.stem.split("_")[1])
    )
    card = render_model_card(
        config,
        info,
        repo_or_path=repo_or_path,
        hub_layout=hub_layout,
        metrics=metrics,
        sample_grid=SAMPLE_GRID if (folder / SAMPLE_GRID).is_file() else None,
        widget_images=[f"{WIDGET_DIR}/{p.name}" for p in widget] or None,
    )
    card.save(folder / CARD)
    return folder / CARD
