"""Test setup: offline, deterministic, no writes to the home cache."""

import os
import tempfile

# Any accidental hub call must fail in milliseconds instead of hanging.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["DIFFUSERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="t2i_drift_hf_home_"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
