"""Text encoder adapters: tokenizer + frozen encoder -> token embeddings, mask, pooled; a disk cache."""

from t2i_drift.text.cache import TextEmbeddingCache, default_cache_dir
from t2i_drift.text.encoders import (
    TextEmbeddings,
    TextEncoderSlot,
    combine_embeddings,
    default_pooling,
    encode_in_batches,
    encode_prompts,
    encode_text,
    encoder_family,
    load_text_encoder,
    resolve_text_encoder_path,
)

__all__ = [
    "TextEmbeddingCache",
    "TextEmbeddings",
    "TextEncoderSlot",
    "combine_embeddings",
    "default_cache_dir",
    "default_pooling",
    "encode_in_batches",
    "encode_prompts",
    "encode_text",
    "encoder_family",
    "load_text_encoder",
    "resolve_text_encoder_path",
]
