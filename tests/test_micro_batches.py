"""Micro-batches with gradient accumulation give the update of the batch in one piece, for every loss type.

A trainer with ``micro_batch_sequences`` trains a batch in slices and adds up
their gradients before one optimizer step; each slice's loss is normalised by
the whole batch's sequences and tokens (``policy_loss(..., whole=...)``), so
the weights after a step, and the step's loss, KL and clip ratio, are those of
the batch trained at once (to float rounding).
"""

from __future__ import annotations

import pytest
import torch

from fedgrpo.services.policy_trainer.batching import Sample
from fedgrpo.services.policy_trainer.loss import LossSettings
from fedgrpo.services.policy_trainer.trainer import OptimizerConfig, PolicyTrainer
from tests.test_shared_prompt import samples, tiny  # noqa: F401  (tiny: a module fixture)


def step(tiny_model, state, loss_type: str, micro: int, batch: list[Sample]):  # noqa: ANN201
    torch.manual_seed(0)
    trainer = PolicyTrainer(tiny_model, state, micro_batch_sequences=micro)
    config = OptimizerConfig(learning_rate=1e-3, loss=LossSettings(loss_type=loss_type, beta=0.04),
                             updates_per_batch=2)
    trainer.start("run", config)
    result = trainer.train(1, 0, batch, max_completion_tokens=8)
    return result, [p.detach().clone() for p in trainer.model.parameters()], trainer


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("micro, sizes", [(5, [4, 4, 4]), (3, [3, 1, 3, 1, 3, 1])])  # groups whole; groups split
def test_a_batch_in_micro_batches_moves_the_weights_as_the_batch_at_once(
    tiny, tmp_path, loss_type, micro, sizes  # noqa: F811
):
    batch = samples(4, prompts=3, per_prompt=4)  # 12 sequences, groups interleaved
    whole, w_whole, _ = step(tiny, tmp_path / "whole", loss_type, 0, batch)
    sliced, w_sliced, trainer = step(tiny, tmp_path / "sliced", loss_type, micro, batch)
    assert [len(s) for s in trainer.micro_batches(batch)] == sizes
    base = [p.detach() for p in trainer.reference.parameters()] if trainer.reference is not None else None
    moved = max((a - b).abs().max().item() for a, b in zip(w_whole, base))
    apart = max((a - b).abs().max().item() for a, b in zip(w_whole, w_sliced))
    # Adam's first steps move a weight by about the learning rate whatever its gradient's size, so
    # rounding-level gradient differences (sums in another order) show up at a small fraction of that.
    assert moved > 1e-3 and apart < 0.05 * moved
    assert sliced.loss == pytest.approx(whole.loss, abs=1e-5)
    assert sliced.kl == pytest.approx(whole.kl, abs=1e-6)
    assert sliced.clip_ratio == pytest.approx(whole.clip_ratio, abs=1e-6)
    assert sliced.tokens == whole.tokens and sliced.sequences == whole.sequences == 12


def test_slices_keep_a_prompts_completions_together_where_they_fit(tiny, tmp_path):  # noqa: F811
    trainer = PolicyTrainer(tiny, tmp_path, micro_batch_sequences=8)
    batch = samples(5, prompts=3, per_prompt=4)
    slices = trainer.micro_batches(batch)
    assert [len(s) for s in slices] == [8, 4]
    for piece in slices:  # every prompt lies in one slice only
        prompts = {tuple(s.prompt_ids) for s in piece}
        others = {tuple(s.prompt_ids) for other in slices if other is not piece for s in other}
        assert not prompts & others
    assert PolicyTrainer(tiny, tmp_path, micro_batch_sequences=0).micro_batches(batch) == [batch]
