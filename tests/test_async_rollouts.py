"""Rollouts made while the trainer trains (max_async_level), through real services on loopback.

With k = 1 step n+1 is sampled by the policy of step n-1 while step n
trains: every step's policy lag is at most 1 (and is 1 once the pipeline is
full), its rollouts are stamped with that older version, and the run still
applies every step once. With k = 0 the loop is synchronous: each step
samples from the policy the previous step produced.
"""

from __future__ import annotations

import pytest

from fedgrpo.v1 import orchestrator_pb2 as pb
from tests.conftest import federation
from tests.test_join import run_to_end, steps_of

pytestmark = pytest.mark.integration


def spec(**fields) -> pb.RunSpec:
    return pb.RunSpec(
        tasks=["add1"], steps=4, questions_per_step=2, candidates_per_question=4, experts_per_question=1,
        max_tokens=6, expert_selection=pb.EXPERT_SELECTION_DOMAIN, **fields,
    )


def test_async_rollouts_stay_within_the_lag_and_sync_runs_have_none(tmp_path, model_cache):
    with federation(tmp_path, model_cache, clients=[("add1", [])]) as (stub, _, _):
        runs = {}
        for k in (1, 0):
            run = stub.CreateRun(pb.CreateRunRequest(spec=spec(max_async_level=k)))
            runs[k] = run_to_end(stub, run.run_id)
    for k, run in runs.items():
        assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
        steps = steps_of(run)
        assert [s["step"] for s in steps] == [1, 2, 3, 4]
        assert run.policy.version == 4  # every step trained, once
        lags = [int(s.get("policy_lag", 0)) for s in steps]
        versions = [int(s.get("policy_version", 0)) for s in steps]
        if k == 1:
            # step n samples from the policy after step n - 2: one version behind the one it trains
            assert versions == [0, 0, 1, 2]
            assert lags == [0, 1, 1, 1]
        else:
            assert versions == [0, 1, 2, 3]
            assert lags == [0, 0, 0, 0]


def test_a_batch_sampled_behind_is_trained_with_the_sampler_logprobs(tmp_path):
    """The importance ratio of a lagged batch is against the log-probabilities the batch carries: the
    policy's own values give ratio 1 (nothing clipped); values 0.5 lower give e^0.5 > 1 + epsilon_high on
    every token (all positive-advantage tokens clipped)."""
    import torch

    from fedgrpo.models import build_tiny_model
    from fedgrpo.services.policy_trainer.batching import Sample, pack
    from fedgrpo.services.policy_trainer.loss import LossSettings
    from fedgrpo.services.policy_trainer.trainer import (
        OptimizerConfig,
        PolicyTrainer,
        SamplerLogprobsNeeded,
        StaleBatch,
    )

    tiny = build_tiny_model(tmp_path / "tiny")
    batch = [Sample([1, 40, 41], [50, 51, 52], None, 1.0), Sample([1, 40, 41], [60, 61], None, -1.0),
             Sample([1, 43], [70, 71, 72, 73], None, 1.0), Sample([1, 43], [80], None, -1.0)]
    config = OptimizerConfig(learning_rate=1e-3, loss=LossSettings(beta=0.0), updates_per_batch=1, max_policy_lag=1)
    clips = {}
    for shift in (0.0, 0.5):
        torch.manual_seed(0)
        trainer = PolicyTrainer(tiny, tmp_path / f"state-{shift}")
        trainer.start("run", config)
        trainer.train(1, 0, batch, max_completion_tokens=8)
        with pytest.raises(SamplerLogprobsNeeded):  # sampled by v0, trained at v1: the old policy is gone
            trainer.train(2, 0, batch, max_completion_tokens=8)
        with torch.no_grad():
            now = trainer.sequence_logprobs(trainer.model, pack(batch, trainer.pad_id), batch)
        lagged = [Sample(s.prompt_ids, s.completion_ids, (now[i, :len(s.completion_ids)] - shift).tolist(),
                         s.advantage) for i, s in enumerate(batch)]
        result = trainer.train(2, 0, lagged, max_completion_tokens=8)
        assert result.version.version == 2
        clips[shift] = result.clip_ratio
        with pytest.raises(StaleBatch):  # two versions behind: more than the run allows
            trainer.train(3, 0, lagged, max_completion_tokens=8)
    assert clips[0.0] == pytest.approx(0.0, abs=1e-6)
    positive = (3 + 4) / (3 + 2 + 4 + 1)  # tokens of the positive-advantage completions
    assert clips[0.5] == pytest.approx(positive, abs=1e-6)
