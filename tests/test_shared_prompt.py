"""Each group as one unpadded row, its prompt computed once, gives the packed batch's log-probabilities and
gradients (up to float rounding), in the packed layout, whatever the order and lengths of the samples, with
sdpa and eager attention and with gradient checkpointing; and a trainer step with and without sharing
moves the weights the same way."""

from __future__ import annotations

import contextlib
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from fedgrpo.models import build_tiny_model
from fedgrpo.services.policy_trainer.batching import Sample, pack
from fedgrpo.services.policy_trainer.loss import LossSettings, token_logprobs
from fedgrpo.services.policy_trainer.shared_prompt import (
    group_rows,
    padding_share,
    prompt_groups,
    prompt_share,
    shared_prompt_logprobs,
)
from fedgrpo.services.policy_trainer.trainer import OptimizerConfig, PolicyTrainer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def samples(seed: int, prompts: int = 3, per_prompt: int = 4) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for _ in range(prompts):
        prompt = [rng.randrange(3, 200) for _ in range(rng.randrange(5, 12))]
        for _ in range(per_prompt):
            completion = [rng.randrange(3, 200) for _ in range(rng.randrange(1, 7))]
            out.append(Sample(prompt, completion, None, rng.uniform(-1, 1)))
    rng.shuffle(out)  # groups interleaved, as no caller promises otherwise
    return out


def test_groups_and_share_by_hand():
    a, b = [1, 2, 3], [4, 5]
    batch = [Sample(a, [9], None, 0.0), Sample(b, [9, 9], None, 0.0), Sample(a, [9, 9, 9], None, 0.0)]
    assert prompt_groups(batch) == [[0, 2], [1]]
    # 3 + 2 prompt tokens instead of 3 + 2 + 3, out of 14 real tokens: 3 saved
    assert prompt_share(batch) == pytest.approx(3 / 14)


def test_group_rows_by_hand():
    a, b = [1, 2, 3], [4, 5]
    batch = [Sample(a, [7], None, 0.0), Sample(b, [8, 8], None, 0.0), Sample(a, [9, 9, 9], None, 0.0)]
    layout = group_rows(batch, pad_id=0)
    assert layout.input_ids.tolist() == [[1, 2, 3, 7, 9, 9, 9], [4, 5, 8, 8, 0, 0, 0]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 3, 4, 5], [0, 1, 2, 3, 0, 0, 0]]
    assert layout.rows == [0, 1, 0]
    # a's last prompt token (column 2) predicts both completions' first tokens; 9 9 predict the next 9s
    assert layout.predictors == [[2], [1, 2], [2, 4, 5]]
    assert layout.first_predictor == 1
    allowed = layout.allowed[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],  # completion 7: the prompt and itself
        [1, 1, 1, 0, 1, 0, 0],  # completion 9 9 9: the prompt and itself, never 7
        [1, 1, 1, 0, 1, 1, 0],
        [1, 1, 1, 0, 1, 1, 1],
    ]
    padded = layout.allowed[1, 0].int().tolist()
    assert padded[3] == [1, 1, 1, 1, 0, 0, 0]
    assert padded[5] == [0, 0, 0, 0, 0, 1, 0]  # padding sees only itself
    # the packed batch: 3 rows x (3 + 3) positions, 14 real tokens
    assert padding_share(batch) == pytest.approx(1 - 14 / 18)


@pytest.mark.parametrize("seed, temperature, attention, checkpointing", [
    (0, 1.0, "sdpa", False), (1, 0.7, "sdpa", False), (2, 1.0, "eager", False), (3, 1.0, "sdpa", True),
])
def test_shared_prompt_logprobs_and_gradients_equal_the_packed_ones(tiny, seed, temperature, attention,
                                                                    checkpointing):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32, attn_implementation=attention)
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.train()
    batch = samples(seed)
    packed = pack(batch, 0)
    out = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask, position_ids=packed.position_ids,
                logits_to_keep=packed.completion_width + 1, use_cache=False)
    reference = token_logprobs(out.logits[:, :-1, :], packed.completion_ids, temperature) * packed.completion_mask
    shared = shared_prompt_logprobs(model, batch, 0, temperature, torch.device("cpu"), contextlib.nullcontext)
    assert shared.shape == reference.shape
    assert torch.allclose(shared * packed.completion_mask, reference, atol=1e-5)
    weights = packed.advantages[:, None] * packed.completion_mask
    expected = torch.autograd.grad((reference * weights).sum(), list(model.parameters()))
    got = torch.autograd.grad((shared * weights).sum(), list(model.parameters()))
    for e, g in zip(expected, got):
        assert torch.allclose(g, e, atol=1e-4, rtol=1e-4)


def test_a_trainer_step_moves_the_weights_alike_with_and_without_sharing(tiny, tmp_path):
    config = OptimizerConfig(learning_rate=1e-3, loss=LossSettings(beta=0.04), updates_per_batch=2)
    weights = {}
    for share in (True, False):
        torch.manual_seed(0)
        trainer = PolicyTrainer(tiny, tmp_path / f"state-{share}", share_prompts=share)
        trainer.start("run", config)
        result = trainer.train(1, 0, samples(2), max_completion_tokens=8)
        assert result.version.version == 1
        weights[share] = [p.detach().clone() for p in trainer.model.parameters()]
    base = list(AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).parameters())
    moved = max((a - b).abs().max().item() for a, b in zip(weights[False], base))
    apart = max((a - b).abs().max().item() for a, b in zip(weights[True], weights[False]))
    # Adam's first steps move a weight by about the learning rate whatever its gradient's size, so
    # rounding-level gradient differences show up at a small fraction of that, never more.
    assert moved > 1e-3 and apart < 0.05 * moved


def test_trained_once_the_old_logprobs_need_no_second_forward_pass_and_give_the_same_update(tiny, tmp_path):
    """updates_per_batch 1 takes the old log-probabilities from the update's own forward pass; handing the
    trainer the same values computed beforehand (as the engine's would be) moves the weights identically."""
    config = OptimizerConfig(learning_rate=1e-3, loss=LossSettings(beta=0.0), updates_per_batch=1)
    batch = samples(3)
    weights, calls = {}, {}
    for given in (False, True):
        torch.manual_seed(0)
        trainer = PolicyTrainer(tiny, tmp_path / f"state-{given}")
        trainer.start("run", config)
        rows = batch
        if given:
            with torch.no_grad():
                packed = pack(batch, trainer.pad_id)
                old = trainer.sequence_logprobs(trainer.model, packed, batch)
            rows = [Sample(s.prompt_ids, s.completion_ids, old[i, :len(s.completion_ids)].tolist(), s.advantage)
                    for i, s in enumerate(batch)]
        forward = trainer.sequence_logprobs
        calls[given] = 0

        def counted(*args, _forward=forward, _given=given):
            calls[_given] += 1
            return _forward(*args)

        trainer.sequence_logprobs = counted
        trainer.train(1, 0, rows, max_completion_tokens=8)
        weights[given] = [p.detach().clone() for p in trainer.model.parameters()]
    assert calls == {False: 1, True: 1}  # one forward pass either way: the update's own
    for a, b in zip(weights[False], weights[True]):
        assert torch.allclose(a, b, atol=1e-6)
