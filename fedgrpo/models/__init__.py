"""Model preparation for fedgrpo: local, offline Hugging Face folders.

* :func:`build_tiny_model` -- tiny random Llama + byte-level tokenizer (tests);
* :func:`prepare_smollm2` -- SmolLM2-135M-Instruct converted from a local GGUF;
* :func:`resolve_model` / :data:`KNOWN_MODELS` -- name or path -> folder;
* :func:`save_snapshot` / :func:`prune_snapshots` -- policy snapshots that
  transformers and vLLM (``reload_weights``) load.

All folder writes are atomic (temporary sibling + rename).  Importing this
package is cheap: torch/transformers are imported only when a function runs.
"""

from .chat import chat_prompt_ids
from .registry import KNOWN_MODELS, resolve_model
from .smollm2 import prepare_smollm2
from .snapshot import prune_snapshots, save_snapshot
from .tiny import build_tiny_model
from .tiny_policy import build_tiny_policy

__all__ = [
    "chat_prompt_ids",
    "KNOWN_MODELS",
    "build_tiny_model",
    "build_tiny_policy",
    "prepare_smollm2",
    "prune_snapshots",
    "resolve_model",
    "save_snapshot",
]
