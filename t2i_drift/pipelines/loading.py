"""Load any exported t2i_drift pipeline, in either layout, from a folder or the Hub.

The two layouts (t2i_drift/hub.py explains them): the *standard* one that ``save_pretrained``
writes, and the *hub* one whose ``model_index.json`` names small ``.py`` files that re-export the
installed classes. diffusers runs such files only with ``trust_remote_code=True``. Here they are
read first: a file whose text is exactly the re-export this library writes (:func:`shim_text`)
runs nothing of its own, so the folder loads without the flag; any other code is refused, with
the file named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_SHIM = """# Loaded by diffusers with trust_remote_code=True. It only re-exports the class installed with
# t2i_drift (pip install t2i_drift), so the weights in this repository run the reviewed library code.
from {module} import {name}  # noqa: F401
"""


def shim_text(module: str, name: str) -> str:
    """The exact text of the re-export file for class ``name`` of ``module``."""
    return _SHIM.format(module=module, name=name)


def _known_classes() -> dict[str, type]:
    """Every class of ours a hub layout may name: the pipelines and the components."""
    from t2i_drift.models.mae_resnet import ResNetMAE
    from t2i_drift.models.transformer_drifting import DriftingTransformer2DModel
    from t2i_drift.pipelines import PIPELINE_CLASSES
    from t2i_drift.text.open_clip_text import OpenCLIPTextModel

    return {
        **PIPELINE_CLASSES,
        **{c.__name__: c for c in (DriftingTransformer2DModel, OpenCLIPTextModel, ResNetMAE)},
    }


def resolve_pipeline_folder(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local pipeline folder, or the Hub snapshot of ``owner/name`` (downloaded only when the
    caller named a Hub id and the folder does not exist locally)."""
    path = Path(name_or_path)
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{str(name_or_path)!r} is not a pipeline folder (no model_index.json)")
        return path
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise ValueError(f"{name!r}: no such folder, and not a Hub id of the form owner/name")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(name, revision=revision))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError) as err:
        raise ValueError(
            f"{name!r}: no such folder, and the Hub repository cannot be fetched: {err}"
        ) from err


def verify_hub_layout(folder: Path) -> bool:
    """True for a hub layout whose every ``.py`` file is one of our re-exports (False for the
    standard layout); raises ``ValueError`` naming any other code file."""
    index = json.loads((folder / "model_index.json").read_text())
    if not isinstance(index.get("_class_name"), list):
        return False
    known = _known_classes()
    expected: dict[Path, str] = {}
    entries = [("", index["_class_name"])] + [
        (component, entry)
        for component, entry in index.items()
        if isinstance(entry, list) and len(entry) == 2
    ]
    for component, (module, class_name) in entries:
        if class_name in known and module and "." not in str(module):
            cls = known[class_name]
            expected[folder / component / f"{module}.py"] = shim_text(cls.__module__, cls.__name__)
    for file in sorted(folder.rglob("*.py")):
        if expected.get(file) != file.read_text():
            raise ValueError(
                f"{file}: not a t2i_drift re-export file; inspect it, then load the folder yourself with "
                "DiffusionPipeline.from_pretrained(..., trust_remote_code=True) if you trust it"
            )
    return True


def load_pipeline(name_or_path: str | Path, **kwargs: Any):
    """Load an exported t2i_drift pipeline (standard or hub layout; a folder or a Hub id) as the
    class its ``model_index.json`` names; ``kwargs`` go to ``from_pretrained`` (e.g. ``dtype``,
    ``revision``)."""
    from t2i_drift.pipelines import PIPELINE_CLASSES

    folder = resolve_pipeline_folder(name_or_path, kwargs.get("revision"))
    name = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    class_name = name[-1] if isinstance(name, list) else name
    if class_name not in PIPELINE_CLASSES:
        raise ValueError(
            f"{folder / 'model_index.json'}: _class_name {name!r} is not one of {sorted(PIPELINE_CLASSES)}"
        )
    if verify_hub_layout(folder):
        kwargs.setdefault("trust_remote_code", True)  # the files only re-export installed classes
    kwargs.pop("revision", None)
    return PIPELINE_CLASSES[class_name].from_pretrained(folder, **kwargs)
