"""Text encoder adapters: tokenizer + frozen encoder -> token embeddings, mask, pooled."""

from t2i_drift.text.encoders import (
    TextEmbeddings,
    encode_in_batches,
    encode_prompts,
    load_text_encoder,
    resolve_text_encoder_path,
)

__all__ = [
    "TextEmbeddings",
    "encode_in_batches",
    "encode_prompts",
    "load_text_encoder",
    "resolve_text_encoder_path",
]
