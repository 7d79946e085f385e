"""Text conditioning: encoder adapters, the run's TextConditioner, and an on-disk embedding cache."""

from t2i_drift.text.cache import TextEmbeddingCache, default_cache_dir
from t2i_drift.text.conditioner import ENCODER_NAMES, TextConditioner, TextEncoderSpec
from t2i_drift.text.encoders import (
    TextEmbeddings,
    TextEncoderSlot,
    combine_embeddings,
    default_pooling,
    encode_prompts,
    encode_text,
    encoder_family,
    load_text_encoder,
    resolve_text_encoder_path,
)
from t2i_drift.text.open_clip_text import OpenCLIPTextModel, load_open_clip_text

__all__ = [
    "ENCODER_NAMES",
    "TextConditioner",
    "TextEmbeddingCache",
    "TextEmbeddings",
    "TextEncoderSlot",
    "TextEncoderSpec",
    "OpenCLIPTextModel",
    "combine_embeddings",
    "default_cache_dir",
    "default_pooling",
    "encode_prompts",
    "encode_text",
    "encoder_family",
    "load_open_clip_text",
    "load_text_encoder",
    "resolve_text_encoder_path",
]
