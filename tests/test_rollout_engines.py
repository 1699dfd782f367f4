"""Rollout engines keep their contract (rollout/engine.py): logprobs at the
sampling temperature, seeded calls reproducible. The transformers engine is
checked here (cheap); the vLLM engine in test_vllm_engine.py. Also the pure
parts: a step's sampling seed and the engine limits derived from the model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedgrpo.models import chat_prompt_ids
from fedgrpo.services.orchestrator.rollout import EngineLimitError, SamplingSettings, make_engine
from fedgrpo.services.orchestrator.rollout.limits import (
    DEFAULT_MAX_MODEL_LEN,
    context_length,
    kv_bytes_per_token,
    resolve_max_model_len,
)
from fedgrpo.tasks import build_questions, user_message


def prompts_for(model_dir, count: int = 4) -> list[list[int]]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    return [chat_prompt_ids(tok, user_message(q.text)) for q in build_questions("add1", 7, count)]


@torch.no_grad()
def tempered_reference(model, prompt: list[int], completion: list[int], temperature: float) -> list[float]:
    """log_softmax(logits / T) of each completion token, by one transformers forward pass."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    logprobs = (logits / temperature).log_softmax(-1)
    return logprobs.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1).tolist()


def assert_tempered(groups, prompts, model, temperature: float, atol: float) -> int:
    checked = 0
    for prompt, group in zip(prompts, groups):
        for c in group:
            assert len(c.logprobs) == len(c.token_ids) > 0
            expected = tempered_reference(model, prompt, c.token_ids, temperature)
            assert c.logprobs == pytest.approx(expected, abs=atol), (c.token_ids, c.logprobs, expected)
            checked += len(c.token_ids)
    return checked


def test_transformers_engine_logprobs_are_tempered(model_cache):
    model_dir = model_cache / "tiny-policy"
    engine = make_engine("transformers", model_dir)
    prompts = prompts_for(model_dir)
    groups = engine.generate(prompts, SamplingSettings(n=4, temperature=0.7, top_p=0.9, max_tokens=12, seed=1))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert assert_tempered(groups, prompts, model, 0.7, atol=1e-4) >= 16


def test_transformers_engine_follows_the_seed(model_cache):
    model_dir = model_cache / "tiny-policy"
    engine = make_engine("transformers", model_dir)
    prompts = prompts_for(model_dir, 6)

    def sample(seed):
        groups = engine.generate(prompts, SamplingSettings(n=4, temperature=1.5, max_tokens=16, seed=seed))
        return [[c.token_ids for c in g] for g in groups]

    first = sample(11)
    engine.generate(prompts, SamplingSettings(n=3, temperature=1.0, max_tokens=8))  # unseeded, in between
    torch.rand(1000)  # and other users of the process's RNG
    assert sample(11) == first
    assert sample(12) != first


def test_the_shared_sampler_trims_at_eos_and_leaves_the_process_rng_alone(model_cache):
    """fedgrpo.models.generation.sample serves the engine above and a client's local trainer (FedMOA)."""
    from fedgrpo.models.generation import sample

    model_dir = model_cache / "tiny-policy"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = prompts_for(model_dir, 3)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    state = torch.get_rng_state()
    groups = sample(model, tok, prompts, n=5, temperature=1.5, top_p=1.0, max_tokens=24, seed=3, logprobs=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert [len(g) for g in groups] == [5, 5, 5]
    for c in (c for g in groups for c in g):
        assert c.logprobs == [] and 0 < len(c.token_ids) <= 24
        assert not eos & set(c.token_ids[:-1]), "nothing after the first EOS"
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
    greedy = sample(model, tok, prompts, n=3, temperature=0, top_p=1.0, max_tokens=12)
    assert all(len({tuple(c.token_ids) for c in g}) == 1 for g in greedy)
    assert all(len(c.logprobs) == len(c.token_ids) for g in greedy for c in g)


def test_step_seed_depends_on_run_seed_and_step_only():
    seed = SamplingSettings.step_seed
    assert seed(3, 5) == seed(3, 5)  # e.g. the same step after a resume
    assert len({seed(s, t) for s in range(4) for t in range(1, 51)}) == 200
    assert all(0 <= seed(s, t) < 2**63 for s in (0, 2**62) for t in (1, 10**6))


# ---------------------------------------------------------------- limits

TINY = {"max_position_embeddings": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 32, "hidden_size": 128}


def test_max_model_len_is_derived_from_the_model():
    assert context_length(TINY) == 512
    assert resolve_max_model_len(None, TINY) == 512
    assert resolve_max_model_len(None, {**TINY, "max_position_embeddings": 8192}) == DEFAULT_MAX_MODEL_LEN
    assert resolve_max_model_len(None, {"text_config": TINY}) == 512
    assert resolve_max_model_len(None, {}) == DEFAULT_MAX_MODEL_LEN
    assert resolve_max_model_len(300, TINY) == 300


def test_impossible_limits_name_the_flag():
    with pytest.raises(EngineLimitError, match="max_position_embeddings") as err:
        resolve_max_model_len(4096, TINY)
    assert err.value.flag == "--max-model-len" and "4096" in str(err.value)
    # 2 layers x (K and V) x 2 heads x 32 dims x 4 bytes = 1 KiB per token in float32
    assert kv_bytes_per_token(TINY, "float32") == 1024
    assert kv_bytes_per_token(TINY, "bfloat16") == 512
    big = {**TINY, "max_position_embeddings": 10**7}
    with pytest.raises(EngineLimitError, match="1048576 tokens") as err:
        resolve_max_model_len(2 * 1024**2, big, kv_cache_gib=1)
    assert err.value.flag == "--vllm-kv-cache-gib"
    assert resolve_max_model_len(1024**2, big, kv_cache_gib=1) == 1024**2


def test_the_engine_arguments_differ_between_cpu_and_gpu_only_where_they_must():
    from pathlib import Path

    from fedgrpo.services.orchestrator.rollout.vllm_engine import engine_arguments

    cpu = engine_arguments(Path("m"), "cpu", "float32", 2048, 7)
    assert cpu == {"model": "m", "dtype": "float32", "max_model_len": 2048, "seed": 7, "enforce_eager": True}
    gpu = engine_arguments(Path("m"), "cuda", "bfloat16", 2048, 7, gpu_memory_utilization=0.4, tensor_parallel_size=4)
    assert gpu == {"model": "m", "dtype": "bfloat16", "max_model_len": 2048, "seed": 7, "enforce_eager": False,
                   "gpu_memory_utilization": 0.4, "tensor_parallel_size": 4}
    with pytest.raises(ValueError, match="tensor_parallel_size 2 needs device cuda"):
        engine_arguments(Path("m"), "cpu", "float32", 2048, 7, tensor_parallel_size=2)
