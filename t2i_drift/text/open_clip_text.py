"""OpenCLIP text towers (the text encoders of SD 2.x and SDXL) as a pipeline component.

``text.encoder=open_clip:<model>`` names an OpenCLIP model: a built-in name (``ViT-H-14``,
``ViT-bigG-14``, see ``open_clip.list_models()``), ``hf-hub:<repo id>`` or ``local-dir:<folder>``.
``text.pretrained`` picks its weights: a pretrained tag (``laion2b_s32b_b79k``, see
``open_clip.list_pretrained_tags_by_model``), a local checkpoint file, or ``none`` for random
weights (tests, from-scratch runs); hub repositories and local folders bring their own checkpoint.

Only the text tower is built and kept: an image tower of ViT-bigG's size would cost gigabytes and
is never used. :class:`OpenCLIPTextModel` holds open_clip's own ``TextTransformer`` and is a
diffusers ``ModelMixin``, so an exported pipeline stores it as ``config.json`` plus safetensors and
reloads it offline without open_clip's registry. The tokenizer is converted once into a transformers
tokenizer (saved and loaded by diffusers like any other): open_clip's BPE tokenizer becomes a
``CLIPTokenizer`` with the same ids (its padding token stays ``<|endoftext|>``: making open_clip's
padding id 0, ``!``, a special token would change how ``!`` in a prompt tokenizes; the tower puts
its own padding id wherever the attention mask is 0); a tower whose tokenizer is a transformers
one (SigLIP-style) keeps that tokenizer.

Outputs for ``input_ids`` [B, L] (any L up to the tower's context length):
    last_hidden_state [B, L, width]  token states: after the final LayerNorm (``layer="last"``) or
                                     the raw output of the second-to-last block
                                     (``layer="penultimate"``, SDXL's and diffusers' convention)
    text_embeds       [B, embed_dim] the projected pooled embedding, equal to ``encode_text``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from transformers import CLIPTokenizer, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

OPEN_CLIP_PREFIX = "open_clip:"
TextLayer = Literal["last", "penultimate"]
TEXT_LAYERS = ("last", "penultimate")
# open_clip's text cleaning before tokenizing: "lower" for its BPE tokenizer, "whitespace" for the
# transformers tokenizers it wraps (open_clip.tokenizer.get_clean_fn).
CLEAN_MODES = ("lower", "whitespace", "canonicalize")
# Top-level keys of a ``CLIP`` checkpoint that belong to its text tower (a ``CustomTextCLIP``
# checkpoint keeps the tower under ``text.`` instead).
_CLIP_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


@dataclass
class OpenCLIPTextOutput(ModelOutput):
    """See the module docstring for shapes."""

    last_hidden_state: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None


class OpenCLIPTextModel(ModelMixin, ConfigMixin):
    """An OpenCLIP text tower, frozen by the trainer like every text encoder.

    Args:
        embed_dim: the width of the projected pooled embedding (the CLIP joint space).
        text_cfg: open_clip's text config (``model_cfg["text_cfg"]``: context_length, vocab_size,
            width, heads, layers, ...).
        quick_gelu: the model config's ``quick_gelu`` (OpenAI-trained weights use it).
        layer: which token states :meth:`forward` returns (module docstring).
        clean: the text cleaning open_clip applies before its tokenizer (:meth:`clean_prompts`).
        model_name: the open_clip model this tower came from (provenance and model cards).

    Building one imports open_clip; importing this module does not (``import t2i_drift`` registers
    the class for diffusers without paying open_clip's import time).
    """

    @register_to_config
    def __init__(
        self,
        embed_dim: int,
        text_cfg: dict[str, Any],
        quick_gelu: bool = False,
        layer: str = "last",
        clean: str = "lower",
        model_name: str | None = None,
    ) -> None:
        super().__init__()
        from open_clip.model import _build_text_tower  # open_clip's own text_cfg -> TextTransformer

        if layer not in TEXT_LAYERS:
            raise ValueError(f"OpenCLIPTextModel layer must be one of {TEXT_LAYERS}, got {layer!r}")
        if clean not in CLEAN_MODES:
            raise ValueError(f"OpenCLIPTextModel clean must be one of {CLEAN_MODES}, got {clean!r}")
        check_supported(text_cfg, model_name)
        self.text = _build_text_tower(embed_dim, text_cfg, quick_gelu)

    @property
    def context_length(self) -> int:
        return int(self.text.context_length)

    @property
    def pad_id(self) -> int:
        return int(self.text.pad_id)

    def clean_prompts(self, prompts: list[str]) -> list[str]:
        """open_clip's cleaning (ftfy, HTML unescaping, whitespace, lower case for its BPE
        tokenizer), which the transformers tokenizer does not repeat: call it before tokenizing."""
        from open_clip.tokenizer import get_clean_fn

        clean = get_clean_fn(self.config.clean)
        return [clean(p) for p in prompts]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> OpenCLIPTextOutput:
        """Token states and pooled embedding of ``input_ids`` [B, L].

        Positions where ``attention_mask`` [B, L] is 0 and the rest of the tower's context get its
        padding id before the pass, so the pooled output equals open_clip's ``encode_text`` on the
        same tokens."""
        length = input_ids.shape[1]
        if length > self.context_length:
            raise ValueError(f"{length} tokens exceed the tower's context length {self.context_length}")
        if attention_mask is not None:
            input_ids = input_ids.masked_fill(attention_mask == 0, self.pad_id)
        ids = F.pad(input_ids, (0, self.context_length - length), value=self.pad_id)  # [B, ctx]
        out = self.text.forward_intermediates(ids, indices=2, output_fmt="NLC")
        if self.config.layer == "last":
            hidden = self.text.ln_final(out["text_intermediates"][-1])  # what the pooled output reads
        else:
            hidden = out["text_intermediates"][-2]
        return OpenCLIPTextOutput(last_hidden_state=hidden[:, :length], text_embeds=out["text_features"])


# ------------------------------------------------------------------------------------------------
def check_supported(text_cfg: dict[str, Any], model_name: str | None) -> None:
    """Raise for the text towers this class does not cover (before anything is built)."""
    if text_cfg.get("hf_model_name"):
        raise ValueError(
            f"open_clip model {model_name!r} wraps the transformers model {text_cfg['hf_model_name']!r} "
            f"as its text tower: use text.encoder={text_cfg['hf_model_name']} directly"
        )
    if text_cfg.get("embed_cls"):
        raise ValueError(f"open_clip model {model_name!r}: CoCa-style text towers are not supported")


def model_config(model_name: str) -> dict[str, Any]:
    """open_clip's model config (embed_dim, quick_gelu, text_cfg, ...) for a built-in name,
    ``hf-hub:<id>`` or ``local-dir:<folder>``."""
    import open_clip

    try:
        config = open_clip.get_model_config(model_name)
    except Exception as err:  # hub or file errors: name the model
        raise ValueError(f"open_clip model {model_name!r}: cannot read its config: {err}") from err
    if not config:
        raise ValueError(
            f"unknown open_clip model {model_name!r}: use a name from open_clip.list_models() "
            "(e.g. ViT-H-14), hf-hub:<repo id> or local-dir:<folder>"
        )
    return config


def _checkpoint_path(model_name: str, pretrained: str | None) -> str | None:
    """The checkpoint file to read (None: random weights); see the module docstring."""
    import open_clip

    if pretrained is not None and pretrained.lower() == "none":
        return None
    if pretrained is not None and Path(pretrained).is_file():
        return pretrained
    schema, identifier = open_clip.factory.parse_model_name(model_name)
    if pretrained is None:
        if schema == "hf-hub":
            try:
                return open_clip.pretrained.download_pretrained_from_hf(identifier)
            except Exception as err:
                raise ValueError(f"open_clip model {model_name!r}: cannot fetch its weights: {err}") from err
        if schema == "local-dir":
            found = open_clip.factory._find_checkpoint_in_dir(Path(identifier))
            if found is None:
                raise ValueError(f"open_clip model {model_name!r}: no checkpoint file in {identifier}")
            return found
        raise ValueError(
            f"open_clip model {model_name!r} needs text.pretrained: a tag "
            f"{open_clip.list_pretrained_tags_by_model(model_name)}, a checkpoint file, or none"
        )
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        raise ValueError(
            f"text.pretrained={pretrained!r} is neither a file nor a pretrained tag of open_clip model "
            f"{model_name!r} (tags: {open_clip.list_pretrained_tags_by_model(model_name)})"
        )
    try:
        return open_clip.download_pretrained(cfg)
    except Exception as err:  # offline, or the hub refused: name what was asked for
        raise ValueError(
            f"open_clip model {model_name!r}: cannot fetch the {pretrained!r} weights (offline machines "
            f"can pass a local checkpoint file as text.pretrained): {err}"
        ) from err


def text_tower_state_dict(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text tower's tensors of a full open_clip checkpoint, named as in ``TextTransformer``."""
    if any(k.startswith("text.") for k in checkpoint):  # CustomTextCLIP
        return {k[len("text.") :]: v for k, v in checkpoint.items() if k.startswith("text.")}
    return {k: v for k, v in checkpoint.items() if k.startswith(_CLIP_TEXT_KEYS)}


def load_open_clip_text(
    model_name: str, pretrained: str | None = None, layer: str = "last"
) -> tuple[PreTrainedTokenizerBase, OpenCLIPTextModel]:
    """(tokenizer, text tower) of an open_clip model, frozen and in eval mode."""
    import open_clip

    config = model_config(model_name)
    check_supported(config["text_cfg"], model_name)
    tokenizer, clean = transformers_tokenizer(model_name, config)
    path = _checkpoint_path(model_name, pretrained)  # before building: fail fast on a missing file
    model = OpenCLIPTextModel(
        embed_dim=config["embed_dim"],
        text_cfg=config["text_cfg"],
        quick_gelu=bool(config.get("quick_gelu", False)),
        layer=layer,
        clean=clean,
        model_name=model_name,
    )
    if path is not None:
        state = text_tower_state_dict(open_clip.factory.load_state_dict(path))
        expected = model.text.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(
                f"checkpoint {path} does not fit open_clip model {model_name!r}'s text tower: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}, other shapes {wrong[:5]}"
            )
        model.text.load_state_dict(state)
    model.requires_grad_(False)
    model.eval()
    return tokenizer, model


def transformers_tokenizer(model_name: str, config: dict[str, Any]) -> tuple[PreTrainedTokenizerBase, str]:
    """open_clip's tokenizer for ``model_name`` as a transformers tokenizer with the same ids, and
    the name of the cleaning open_clip applies before it (:data:`CLEAN_MODES`)."""
    import open_clip

    kwargs = dict(config["text_cfg"].get("tokenizer_kwargs") or {})
    clean = kwargs.pop("clean", None)  # SigLIP-style configs name their cleaning; nothing else is supported
    if kwargs or (clean is not None and clean not in CLEAN_MODES):
        raise ValueError(
            f"open_clip model {model_name!r}: tokenizer options {config['text_cfg']['tokenizer_kwargs']} "
            "are not supported"
        )
    tokenizer = open_clip.get_tokenizer(model_name)
    if isinstance(tokenizer, open_clip.tokenizer.HFTokenizer):
        return tokenizer.tokenizer, clean or "whitespace"
    if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer):
        raise ValueError(
            f"open_clip model {model_name!r}: tokenizer {type(tokenizer).__name__} is not supported"
        )
    # The same vocabulary and merges under transformers' names for the two special tokens.
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renamed.get(token, token): i for token, i in tokenizer.encoder.items()}
    merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1])]
    converted = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=int(config["text_cfg"].get("context_length", 77)),
    )
    return converted, clean or "lower"
