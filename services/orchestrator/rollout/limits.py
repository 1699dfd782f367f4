"""The rollout engine's limits, derived before it starts.

``resolve_max_model_len(requested, model_config, ...)`` returns the longest
prompt + completion (tokens) the engine serves: the ``--max-model-len`` asked
for, else the model's context length (``max_position_embeddings`` or its
aliases in ``config.json``) capped at ``DEFAULT_MAX_MODEL_LEN``. A request the
model or the KV cache cannot hold raises ``EngineLimitError`` naming the flag
to change, instead of letting vLLM fail with a traceback minutes later.

Runs and Generate calls are then bounded by the result: a spec's
``max_tokens`` must be below it, and a prompt plus ``max_tokens`` must fit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

# Enough for the questions served here (a prompt of < 200 tokens) plus long
# completions, while keeping the KV cache vLLM reserves for one sequence small.
DEFAULT_MAX_MODEL_LEN = 2048
# Keys under which config.json files give the context length (vLLM reads the same ones).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class EngineLimitError(ValueError):
    """The engine cannot start with these settings; ``flag`` is the option to change."""

    def __init__(self, flag: str, problem: str) -> None:
        super().__init__(f"{flag}: {problem}")
        self.flag = flag


def read_model_config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def context_length(config: Mapping) -> int | None:
    """The model's longest sequence in tokens, or None when config.json does not say."""
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    found = [int(config[k]) for k in CONTEXT_KEYS if isinstance(config.get(k), int) and config[k] > 0]
    return min(found) if found else None


def kv_bytes_per_token(config: Mapping, dtype: str) -> int | None:
    """Bytes of KV cache one token takes (keys and values of every layer), or None if unknown."""
    config = config.get("text_config", config)
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return 2 * layers * kv_heads * head_dim * DTYPE_BYTES.get(dtype, 4)


def resolve_max_model_len(
    requested: int | None, config: Mapping, *, dtype: str = "float32", kv_cache_gib: float | None = None
) -> int:
    """The engine's max_model_len (see module docstring); ``kv_cache_gib``: the CPU KV budget, if any."""
    positions = context_length(config)
    if requested is None:
        length = min(positions, DEFAULT_MAX_MODEL_LEN) if positions else DEFAULT_MAX_MODEL_LEN
    elif positions is not None and requested > positions:
        raise EngineLimitError(
            "--max-model-len",
            f"got {requested}, but the model holds at most {positions} tokens (max_position_embeddings); "
            f"give at most {positions}, or leave it unset to derive it from the model",
        )
    else:
        length = requested
    per_token = kv_bytes_per_token(config, dtype)
    if kv_cache_gib is not None and per_token is not None:
        tokens = int(kv_cache_gib * 1024**3 // per_token)
        if tokens < length:
            raise EngineLimitError(
                "--vllm-kv-cache-gib",
                f"{kv_cache_gib:g} GiB of KV cache holds {tokens} tokens of this model ({per_token} bytes each), "
                f"fewer than one sequence of max_model_len {length}: "
                "raise --vllm-kv-cache-gib or lower --max-model-len",
            )
    return length
