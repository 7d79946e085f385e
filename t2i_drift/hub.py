"""Model cards (rendered from ``model_cards/`` with huggingface_hub's ModelCard)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

from t2i_drift.data.openmoji import OPENMOJI_ATTRIBUTION

# The template lives in the repository's model_cards/ (the package is installed editable, `pip install -e .`).
TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "drifting_pipeline.md"


def _template_text() -> str:
    if not TEMPLATE.is_file():
        raise FileNotFoundError(
            f"model card template not found at {TEMPLATE} (install the repository with -e)"
        )
    return TEMPLATE.read_text()


def render_model_card(
    config: dict[str, Any],
    *,
    generator_params: int,
    steps: int,
    repo_or_path: str,
    metrics: dict[str, float] | None = None,
) -> ModelCard:
    """Model card of a pipeline trained with ``config`` (the resolved run config as a dict)."""
    data, text, drift = config["data"], config["text"], config["drift"]
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-image",
        license="cc-by-sa-4.0" if data["name"] == "openmoji" else "other",
        tags=["text-to-image", "drifting", "one-step", "t2i_drift"],
        base_model=None,
        datasets=["openmoji"] if data["name"] == "openmoji" else None,
    )
    return ModelCard.from_template(
        card_data,
        template_str=_template_text(),
        model_name=f"t2i_drift one-step generator ({data['name']}, {data['resolution']}px)",
        repo_or_path=repo_or_path,
        guidance_range=f"[1, {drift['alpha_max']}]",
        dataset_description="OpenMoji emoji rendered offline, their CLDR names as captions"
        if data["name"] == "openmoji"
        else data["name"],
        text_encoder="sentence-transformers/all-MiniLM-L6-v2"
        if text["encoder"] == "minilm"
        else text["encoder"],
        max_length=text["max_length"],
        pooling=text["pooling"],
        generator_params=f"{generator_params / 1e6:.2f}M",
        resolution=data["resolution"],
        space="pixels",
        steps=steps,
        metrics=metrics or {},
        config_yaml=yaml.safe_dump(config, sort_keys=False).strip(),
        attribution=OPENMOJI_ATTRIBUTION if data["name"] == "openmoji" else "",
    )
