"""The Hub layout of a pipeline folder, and uploads (the card itself: t2i_drift/model_card.py).

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
import shutil
from pathlib import Path

from huggingface_hub import HfApi

from t2i_drift.model_card import EXPORT_INFO, write_model_card
from t2i_drift.pipelines.loading import shim_text


def _is_previous_hub_layout(folder: Path) -> bool:
    """Whether ``folder`` is a hub layout this module wrote: a model_index.json and a top-level
    pipeline shim with exactly the text it writes."""
    from t2i_drift.pipelines import PIPELINE_CLASSES

    if not (folder / "model_index.json").is_file():
        return False
    for cls in PIPELINE_CLASSES.values():
        shim = folder / f"{cls.__module__.rsplit('.', 1)[-1]}.py"
        if shim.is_file() and shim.read_text() == shim_text(cls.__module__, cls.__name__):
            return True
    return False


def write_hub_layout(
    pipeline_dir: str | Path, out_dir: str | Path, *, repo_or_path: str | None = None
) -> list[str]:
    """Copy a standard-layout pipeline folder to ``out_dir`` in the hub layout (module docstring).

    ``out_dir`` must be new, empty, or a hub layout written here before (then it is replaced):
    nothing else is ever deleted. The model card is rendered again for the hub layout, its snippets
    loading ``repo_or_path`` (default: ``out_dir``).

    Returns:
        the relative paths of every file in ``out_dir`` (what an upload sends), sorted.
    """
    src, dst = Path(pipeline_dir), Path(out_dir)
    index_path = src / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{src} is not a pipeline folder (no model_index.json)")
    s, d = src.resolve(), dst.resolve()
    if d == s or d in s.parents or s in d.parents:
        raise ValueError(
            f"the hub layout folder {dst} must be outside the pipeline folder {src} and not contain it"
        )
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not _is_previous_hub_layout(dst):
        raise ValueError(
            f"{dst} exists and is not empty, and it is not a hub layout written by t2i_drift: refusing "
            "to replace it (choose a new or empty folder)"
        )
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
    (dst / f"{pipeline_module}.py").write_text(shim_text(pipeline_cls.__module__, pipeline_cls.__name__))
    # Every component of ours (the transformer; an OpenCLIP text tower) gets a shim in its folder.
    for component, entry in list(index.items()):
        if isinstance(entry, list) and len(entry) == 2 and str(entry[0]).startswith("t2i_drift."):
            module, class_name = entry
            short = module.rsplit(".", 1)[-1]  # transformer_drifting, open_clip_text
            index[component] = [short, class_name]
            (dst / component / f"{short}.py").write_text(shim_text(module, class_name))
    (dst / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    if (dst / EXPORT_INFO).is_file():  # a t2i_drift export: its card gets the hub-layout snippets
        write_model_card(dst, repo_or_path=repo_or_path or str(out_dir), hub_layout=True)
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

    The card's usage snippets are rendered to load ``repo_id``. With ``dry_run`` nothing is sent:
    ``staging_dir`` then holds exactly what would be uploaded.

    Returns:
        the uploaded (or would-be uploaded) relative file paths.
    """
    files = write_hub_layout(pipeline_dir, staging_dir, repo_or_path=repo_id)
    staging = Path(staging_dir)
    if dry_run:
        return files
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=repo_id, folder_path=str(staging), commit_message=commit_message, repo_type="model"
    )
    return files
