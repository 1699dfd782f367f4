"""Packing of (prompt, completion) pairs for the trainer."""

import torch

from fedgrpo.services.policy_trainer.batching import Sample, pack


def test_prompts_left_padded_completions_right_padded():
    batch = pack(
        [Sample([1, 2, 3], [4, 5], [-0.1, -0.2], 1.0), Sample([6], [7, 8, 9], [-0.3, -0.4, -0.5], -1.0)], pad_id=0
    )
    assert batch.prompt_width == 3 and batch.completion_width == 3
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 0], [0, 0, 6, 7, 8, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    # positions count real tokens, as the sampler saw them
    assert batch.position_ids[1, 2:].tolist() == [0, 1, 2, 3]
    assert batch.completion_ids.tolist() == [[4, 5, 0], [7, 8, 9]]
    assert batch.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert torch.allclose(batch.old_logprobs, torch.tensor([[-0.1, -0.2, 0.0], [-0.3, -0.4, -0.5]]))
    assert batch.advantages.tolist() == [1.0, -1.0]


def test_missing_logprobs_mean_recompute():
    batch = pack([Sample([1], [2], None, 0.5), Sample([1], [2], [-1.0], 0.5)], pad_id=0)
    assert batch.old_logprobs is None
