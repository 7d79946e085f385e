"""Model cards, the Hub layout of a pipeline folder, and uploads.

Two layouts of one exported pipeline (diffusers compatibility):

* the **standard layout** that ``DriftingPipeline.save_pretrained`` writes. Its
  ``model_index.json`` names the transformer by its module path
  (``t2i_drift.models.transformer_drifting``), which diffusers resolves from ``sys.modules``: load it
  with ``DriftingPipeline.from_pretrained(folder)`` after ``import t2i_drift``.
* the **hub layout** that :func:`write_hub_layout` derives from it for uploads. ``_class_name`` is
  ``["pipeline_drifting", "DriftingPipeline"]`` (``["pipeline_flow_matching",
  "FlowMatchingPipeline"]`` for the flow-matching baseline) and the transformer entry is
  ``["transformer_drifting", "DriftingTransformer2DModel"]`` (an OpenCLIP text encoder's,
  ``["open_clip_text", "OpenCLIPTextModel"]``), each backed by a two-line ``.py`` file
  that re-exports the installed class, so ``DiffusionPipeline.from_pretrained(repo,
  trust_remote_code=True)`` (and ``DriftingPipeline.from_pretrained(repo, trust_remote_code=True)``)
  return our classes. The files import ``t2i_drift``; they run no code of their own.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData

from t2i_drift.data.openmoji import OPENMOJI_ATTRIBUTION
from t2i_drift.text.open_clip_text import OPEN_CLIP_PREFIX

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
    sample_grid: str | None = None,
) -> ModelCard:
    """Model card of a pipeline trained with ``config`` (the resolved run config as a dict).

    Args:
        repo_or_path: what the usage snippets load (a hub id or a folder).
        metrics: name -> value, rendered as a table.
        sample_grid: file name of a sample grid next to the card, shown as an image.
    """
    data, text, drift = config["data"], config["text"], config["drift"]
    objective = config.get("objective", {}).get("name", "drifting")
    call_args = {
        "drifting": "guidance_scale=2.0,",
        "regression": "",
        "flow_matching": f"num_inference_steps={config.get('objective', {}).get('num_inference_steps', 25)},",
    }[objective]
    text_encoder = TEXT_ENCODER_HUB_IDS.get(text["encoder"], text["encoder"])
    if text_encoder.startswith(OPEN_CLIP_PREFIX):  # the model name alone does not say which weights
        text_encoder += f" ({text.get('pretrained') or 'its own checkpoint'})"
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-image",
        license="cc-by-sa-4.0" if data["name"] == "openmoji" else "other",
        tags=["text-to-image", *OBJECTIVE_TAGS[objective], "t2i_drift"],
        datasets=["openmoji"] if data["name"] == "openmoji" else None,
        # Not ``base_model``: the frozen text encoder conditions the generator; nothing was fine-tuned.
        text_encoder=text_encoder,
    )
    return ModelCard.from_template(
        card_data,
        template_str=_template_text(),
        model_name=f"t2i_drift {OBJECTIVE_KINDS[objective]} ({data['name']}, {data['resolution']}px)",
        repo_or_path=repo_or_path,
        objective=objective,
        pipeline_class="FlowMatchingPipeline" if objective == "flow_matching" else "DriftingPipeline",
        call_args=call_args,
        cfg=config.get("objective", {}).get("caption_dropout", 0) > 0,
        guidance_range=f"[1, {drift['alpha_max']}]",
        dataset_description="OpenMoji emoji rendered offline, their CLDR names as captions"
        if data["name"] == "openmoji"
        else data["name"],
        text_encoder=text_encoder,
        max_length=text["max_length"],
        pooling=text["pooling"],
        generator_params=f"{generator_params / 1e6:.2f}M",
        resolution=data["resolution"],
        space="pixels" if config["model"].get("vae") is None else f"VAE latents ({config['model']['vae']})",
        steps=steps,
        metrics=metrics or {},
        config_yaml=yaml.safe_dump(config, sort_keys=False).strip(),
        attribution=OPENMOJI_ATTRIBUTION if data["name"] == "openmoji" else "",
        sample_grid=sample_grid,
        prompts=", ".join(config["eval"]["sample_prompts"]),
    )


# ---------------------------------------------------------------------------------------------
# Hub layout and upload
# ---------------------------------------------------------------------------------------------
_FROM_PRETRAINED = re.compile(r'from_pretrained\("[^"]*"')
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
_SHIM = """# Loaded by diffusers with trust_remote_code=True. It only re-exports the class installed with
# t2i_drift (pip install t2i_drift), so the weights in this repository run the reviewed library code.
from {module} import {name}  # noqa: F401
"""


def write_hub_layout(pipeline_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Copy a standard-layout pipeline folder to ``out_dir`` in the hub layout (module docstring).

    Returns:
        the relative paths of every file in ``out_dir`` (what an upload sends), sorted.
    """
    src, dst = Path(pipeline_dir), Path(out_dir)
    index_path = src / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{src} is not a pipeline folder (no model_index.json)")
    if dst.resolve() == src.resolve():
        raise ValueError("write_hub_layout needs a different output folder than the pipeline folder")
    from t2i_drift.pipelines import PIPELINE_CLASSES

    index = json.loads(index_path.read_text())
    name = index.get("_class_name")
    name = name[-1] if isinstance(name, list) else name
    if name not in PIPELINE_CLASSES:
        raise ValueError(
            f"{index_path}: _class_name {index.get('_class_name')!r} is not one of {sorted(PIPELINE_CLASSES)}"
        )
    pipeline_cls = PIPELINE_CLASSES[name]
    pipeline_module = pipeline_cls.__module__.rsplit(".", 1)[-1]  # pipeline_drifting, pipeline_flow_matching
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    index["_class_name"] = [pipeline_module, pipeline_cls.__name__]
    (dst / f"{pipeline_module}.py").write_text(
        _SHIM.format(module=pipeline_cls.__module__, name=pipeline_cls.__name__)
    )
    # Every component of ours (the transformer; an OpenCLIP text tower) gets a shim in its folder.
    for component, entry in list(index.items()):
        if isinstance(entry, list) and len(entry) == 2 and str(entry[0]).startswith("t2i_drift."):
            module, class_name = entry
            short = module.rsplit(".", 1)[-1]  # transformer_drifting, open_clip_text
            index[component] = [short, class_name]
            (dst / component / f"{short}.py").write_text(_SHIM.format(module=module, name=class_name))
    (dst / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())


def push_to_hub(
    pipeline_dir: str | Path,
    repo_id: str,
    *,
    staging_dir: str | Path,
    private: bool = False,
    dry_run: bool = False,
    commit_message: str = "Upload a t2i_drift pipeline",
    token: str | None = None,
) -> list[str]:
    """Write the hub layout of ``pipeline_dir`` to ``staging_dir`` and upload it to ``repo_id``.

    The card's usage snippets are re-rendered to load ``repo_id``. With ``dry_run`` nothing is sent:
    ``staging_dir`` then holds exactly what would be uploaded.

    Returns:
        the uploaded (or would-be uploaded) relative file paths.
    """
    files = write_hub_layout(pipeline_dir, staging_dir)
    staging = Path(staging_dir)
    card_path = staging / "README.md"
    if card_path.is_file():  # the usage snippets loaded the local folder; point them at the repo
        card_path.write_text(_FROM_PRETRAINED.sub(f'from_pretrained("{repo_id}"', card_path.read_text()))
    if dry_run:
        return files
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=repo_id, folder_path=str(staging), commit_message=commit_message, repo_type="model"
    )
    return files
