"""Policy snapshots: Hugging Face folders that transformers and vLLM both load.

Contract of :func:`save_snapshot`:

* ``out_dir`` receives ``model.safetensors`` (the model's state dict as
  contiguous CPU tensors in the model's own dtype, or floating-point tensors
  cast to ``dtype`` when given: a trainer keeps float32 master weights and
  publishes them in the serving dtype; with ``lm_head.weight``
  dropped when ``model.config.tie_word_embeddings`` is true, and safetensors
  metadata ``{"format": "pt"}``), ``config.json`` (the model's config without
  any ``quantization_config``, ``dtype`` set to the weights' dtype), and the
  tokenizer/generation files that exist in ``source_dir``
  (:data:`TOKENIZER_FILES`).  If ``source_dir`` has no
  ``generation_config.json`` but the model has a generation config, that one
  is written.
* The write is atomic: everything is written into a hidden temporary sibling
  folder that is then renamed to ``out_dir``; an existing ``out_dir`` is
  replaced.  Readers see either the old or the new snapshot, never a mix.
* Such a folder can be passed to vLLM's
  ``llm.collective_rpc("reload_weights", kwargs={"weights_path": str(out_dir)})``
  to swap the weights of a running engine in place.

Contract of :func:`prune_snapshots`: under ``root``, folders named ``v<N>``
(``N`` a non-negative integer) are ordered numerically and all but the newest
``keep`` are removed; other entries are ignored.  Returns the removed paths.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
from pathlib import Path

from ._atomic import discard, publish_replace, staging_dir

__all__ = ["save_snapshot", "prune_snapshots", "snapshot_state_dict", "TOKENIZER_FILES"]

log = logging.getLogger(__name__)

#: Files copied verbatim from ``source_dir`` when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
)

_VERSION_RE = re.compile(r"v(\d+)")


def snapshot_state_dict(model, dtype=None, state: dict | None = None) -> dict:
    """The tensors :func:`save_snapshot` writes: name -> contiguous CPU tensor.

    With ``dtype``, floating-point tensors are cast to it (others are kept).

    ``lm_head.weight`` is omitted when the config ties word embeddings.  A
    ``torch.compile`` wrapper prefix (``_orig_mod.``) is stripped.  Tensors
    sharing storage with an earlier tensor are cloned (safetensors refuses
    shared storage). ``state`` replaces ``model.state_dict()`` (a sharded
    model's, gathered whole).
    """
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out: dict = {}
    seen_ptrs: set[int] = set()
    for name, tensor in (model.state_dict() if state is None else state).items():
        name = name.replace("_orig_mod.", "")
        if tied and name == "lm_head.weight":
            continue
        t = tensor.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen_ptrs:
            t = t.clone()
        else:
            seen_ptrs.add(ptr)
        out[name] = t
    return out


def _weights_dtype(state: dict):
    import torch

    for t in state.values():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def save_snapshot(model, source_dir: Path, out_dir: Path, dtype=None, state: dict | None = None) -> Path:
    """Write ``model`` as a loadable HF folder at ``out_dir``; return ``out_dir``.

    ``source_dir`` is the folder the policy was originally loaded from (the
    tokenizer and generation config are copied from it).  See the module
    docstring for the full contract. ``state``: the weights to write instead
    of ``model.state_dict()`` (a sharded model's, gathered whole).
    """
    from safetensors.torch import save_file

    source_dir, out_dir = Path(source_dir), Path(out_dir)
    state = snapshot_state_dict(model, dtype, state)

    staged = staging_dir(out_dir)
    try:
        save_file(state, str(staged / "model.safetensors"), metadata={"format": "pt"})

        cfg = copy.deepcopy(model.config)
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
        cfg.dtype = _weights_dtype(state)
        if not getattr(cfg, "architectures", None):
            cfg.architectures = [type(model).__name__.removeprefix("FSDP")]  # FSDP2 renames the class
        # Same content as config.save_pretrained (only non-default values).
        cfg_dict = json.loads(cfg.to_json_string(use_diff=True))
        cfg_dict.pop("quantization_config", None)
        cfg_dict.pop("_name_or_path", None)
        cfg_dict.pop("_model_name_or_path", None)
        (staged / "config.json").write_text(
            json.dumps(cfg_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )

        for name in TOKENIZER_FILES:
            src = source_dir / name
            if src.is_file():
                shutil.copy2(src, staged / name)
        gen_cfg = getattr(model, "generation_config", None)
        if not (staged / "generation_config.json").exists() and gen_cfg is not None:
            gen_cfg.save_pretrained(staged)

        return publish_replace(staged, out_dir)
    except BaseException:
        discard(staged)
        raise


def prune_snapshots(root: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` ``v<N>`` folders under ``root``.

    Folders are renamed aside before deletion so a reader never sees a
    half-deleted ``v<N>``.  Returns the removed paths, oldest first.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    root = Path(root)
    if not root.is_dir():
        return []
    versions = []
    for entry in root.iterdir():
        m = _VERSION_RE.fullmatch(entry.name)
        if m and entry.is_dir():
            versions.append((int(m.group(1)), entry))
    versions.sort()
    doomed = [p for _, p in versions[: max(0, len(versions) - keep)]]
    for path in doomed:
        trash = path.parent / f".{path.name}.del-{os.getpid()}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:  # pruned concurrently
            continue
        discard(trash)
        log.debug("pruned snapshot %s", path)
    return doomed
