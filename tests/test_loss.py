"""Hand-computed checks of fedgrpo.services.policy_trainer.loss.

The shared example: 2 completions x 3 tokens, eps_low = 0.2, eps_high = 0.3
(clip band [0.8, 1.3]), old log-probs 0 so that ratio = exp(logp) and each
ratio is chosen directly.

    completion 0, A = +1, 3 real tokens, ratios 1.1, 1.5, 0.5
      t0 ratio 1.1 in band     -min(1.1, 1.1) = -1.1
      t1 ratio 1.5 > 1.3, A>0  -min(1.5, 1.3) = -1.3  clipped term active
      t2 ratio 0.5 < 0.8, A>0  -min(0.5, 0.8) = -0.5  outside band, unclipped active
    completion 1, A = -2, 2 real tokens + 1 padding, ratios 0.5, 1.5, (7.0 pad)
      t0 ratio 0.5 < 0.8, A<0  -min(-1.0, -1.6) = 1.6  clipped term active
      t1 ratio 1.5 > 1.3, A<0  -min(-3.0, -2.6) = 3.0  outside band, unclipped active

    row sums: -1.1 - 1.3 - 0.5 = -2.9 (3 tokens), 1.6 + 3.0 = 4.6 (2 tokens)
"""

import math

import pytest
import torch

from fedgrpo.services.policy_trainer.loss import (
    LOSS_TYPES,
    LossSettings,
    LossStats,
    k3_kl,
    policy_loss,
    token_logprobs,
)

RATIOS = [[1.1, 1.5, 0.5], [0.5, 1.5, 7.0]]
ADVANTAGES = [1.0, -2.0]
MASK = [[1, 1, 1], [1, 1, 0]]
MAX_LEN = 4

ROW0_SUM = -1.1 - 1.3 - 0.5  # -2.9
ROW1_SUM = 1.6 + 3.0  # 4.6


def example(mask=MASK, requires_grad=True):
    logprobs = torch.log(torch.tensor(RATIOS, dtype=torch.float64)).requires_grad_(requires_grad)
    old = torch.zeros(2, 3, dtype=torch.float64)
    advantages = torch.tensor(ADVANTAGES, dtype=torch.float64)
    return logprobs, old, advantages, torch.tensor(mask, dtype=torch.float64)


def run(loss_type, mask=MASK, max_len=MAX_LEN, **kwargs):
    logprobs, old, advantages, mask_t = example(mask)
    settings = LossSettings(loss_type=loss_type, **kwargs)
    loss, stats = policy_loss(logprobs, old, advantages, mask_t, settings, max_len)
    return loss, stats, logprobs


def test_loss_types_constant():
    assert LOSS_TYPES == ("grpo", "bnpo", "dr_grpo", "dapo")


def test_grpo_is_mean_of_per_completion_means():
    loss, _, _ = run("grpo")
    expected = (ROW0_SUM / 3 + ROW1_SUM / 2) / 2  # (-0.96667 + 2.3) / 2 = 0.66667
    assert loss.item() == pytest.approx(expected)
    assert loss.item() == pytest.approx(2 / 3)


def test_bnpo_is_token_sum_over_token_count():
    loss, _, _ = run("bnpo")
    assert loss.item() == pytest.approx((ROW0_SUM + ROW1_SUM) / 5)  # 1.7 / 5
    assert loss.item() == pytest.approx(0.34)


def test_dapo_equals_bnpo_with_one_process():
    dapo, _, _ = run("dapo")
    assert dapo.item() == pytest.approx(0.34)


def test_dr_grpo_divides_by_completions_times_max_completion_length():
    loss4, _, _ = run("dr_grpo", max_len=4)
    loss8, _, _ = run("dr_grpo", max_len=8)
    assert loss4.item() == pytest.approx((ROW0_SUM + ROW1_SUM) / (2 * 4))  # 0.2125
    assert loss8.item() == pytest.approx((ROW0_SUM + ROW1_SUM) / (2 * 8))  # 0.10625
    # Not the token count (5): the normaliser is constant in the lengths.
    assert loss4.item() != pytest.approx(0.34)


def test_padding_is_ignored():
    # The padded token has ratio 7.0; changing it must not change anything.
    logprobs, old, advantages, mask = example()
    settings = LossSettings(loss_type="grpo")
    other = logprobs.detach().clone()
    other[1, 2] = -30.0
    a, _ = policy_loss(logprobs, old, advantages, mask, settings, MAX_LEN)
    b, _ = policy_loss(other, old, advantages, mask, settings, MAX_LEN)
    assert a.item() == pytest.approx(b.item())


def test_bool_mask_matches_float_mask():
    logprobs, old, advantages, mask = example()
    settings = LossSettings(loss_type="grpo")
    a, sa = policy_loss(logprobs, old, advantages, mask, settings, MAX_LEN)
    b, sb = policy_loss(logprobs, old, advantages, mask.bool(), settings, MAX_LEN)
    assert a.item() == pytest.approx(b.item())
    assert sa == sb


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_stats_clip_ratio_and_tokens(loss_type):
    _, stats, _ = run(loss_type)
    assert isinstance(stats, LossStats)
    # Active clipping at row 0 t1 (high, A>0) and row 1 t0 (low, A<0); row 0 t2
    # and row 1 t1 are outside the band but on the harmless side: not counted.
    assert stats.clip_ratio == pytest.approx(2 / 5)
    assert stats.tokens == 5
    assert stats.kl == 0.0


def test_gradient_zero_where_clipped_term_is_active():
    loss, _, logprobs = run("bnpo")
    loss.backward()
    # d(-ratio * A)/d logp = -A * ratio where the unclipped term is active, / 5 tokens.
    expected = torch.tensor(
        [
            [-1.0 * 1.1 / 5, 0.0, -1.0 * 0.5 / 5],  # t1 clipped (high)
            [0.0, 2.0 * 1.5 / 5, 0.0],  # t0 clipped (low), t2 padding
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(logprobs.grad, expected)
    assert logprobs.grad[0, 1] == 0 and logprobs.grad[1, 0] == 0


def test_gradients_flow_to_logprobs_only():
    logprobs, old, advantages, mask = example()
    old.requires_grad_(True)
    advantages.requires_grad_(True)
    ref = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    loss, _ = policy_loss(logprobs, old, advantages, mask, LossSettings(beta=0.1), MAX_LEN, ref_logprobs=ref)
    loss.backward()
    assert logprobs.grad is not None
    assert old.grad is None and advantages.grad is None and ref.grad is None


def test_k3_kl_by_hand():
    new = torch.tensor([0.0, -1.0, -2.0, -0.5])
    ref = torch.tensor([0.0, 0.0, -3.0, -0.5])
    # d = ref - new = 0, 1, -1, 0;  k3 = e^d - d - 1
    expected = torch.tensor([0.0, math.e - 1 - 1, math.exp(-1) + 1 - 1, 0.0])
    torch.testing.assert_close(k3_kl(ref, new), expected)
    assert torch.all(k3_kl(new, new) == 0)
    assert torch.all(k3_kl(ref, new)[[1, 2]] > 0)


def test_kl_term_and_stat_by_hand():
    logprobs, old, advantages, mask = example()
    # d = ref - new on real tokens: row 0 (0, 1, -1), row 1 (0.5, 0); padding 4.0 (ignored).
    d = torch.tensor([[0.0, 1.0, -1.0], [0.5, 0.0, 4.0]], dtype=torch.float64)
    ref = logprobs.detach() + d
    kl = [0.0, math.exp(1) - 1 - 1, math.exp(-1) + 1 - 1, math.exp(0.5) - 0.5 - 1, 0.0]
    # 0, 0.7182818, 0.3678794, 0.1487213, 0
    settings = LossSettings(loss_type="bnpo", beta=0.1)
    loss, stats = policy_loss(logprobs, old, advantages, mask, settings, MAX_LEN, ref_logprobs=ref)
    assert stats.kl == pytest.approx(sum(kl) / 5)
    assert loss.item() == pytest.approx(0.34 + 0.1 * sum(kl) / 5)
    assert stats.kl > 0


def test_kl_zero_when_new_equals_ref():
    logprobs, old, advantages, mask = example()
    settings = LossSettings(loss_type="bnpo", beta=0.5)
    loss, stats = policy_loss(logprobs, old, advantages, mask, settings, MAX_LEN, ref_logprobs=logprobs.detach())
    assert stats.kl == 0.0
    assert loss.item() == pytest.approx(0.34)


def test_beta_zero_ignores_ref():
    logprobs, old, advantages, mask = example()
    settings = LossSettings(loss_type="bnpo", beta=0.0)
    garbage = torch.full((2, 3), float("nan"), dtype=torch.float64)
    a, sa = policy_loss(logprobs, old, advantages, mask, settings, MAX_LEN)
    b, sb = policy_loss(logprobs, old, advantages, mask, settings, MAX_LEN, ref_logprobs=garbage)
    assert a.item() == pytest.approx(0.34) and b.item() == pytest.approx(0.34)
    assert sa.kl == 0.0 and sb.kl == 0.0


def test_beta_positive_requires_ref():
    logprobs, old, advantages, mask = example()
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logprobs, old, advantages, mask, LossSettings(beta=0.1), MAX_LEN)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_empty_completion_no_nan(loss_type):
    mask = [[1, 1, 1], [0, 0, 0]]
    loss, stats, logprobs = run(loss_type, mask=mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(logprobs.grad))
    expected = {
        "grpo": (ROW0_SUM / 3 + 0.0) / 2,  # the empty completion contributes 0 / max(0, 1)
        "bnpo": ROW0_SUM / 3,
        "dapo": ROW0_SUM / 3,
        "dr_grpo": ROW0_SUM / (2 * MAX_LEN),
    }[loss_type]
    assert loss.item() == pytest.approx(expected)
    assert stats.tokens == 3
    assert stats.clip_ratio == pytest.approx(1 / 3)
    assert torch.all(logprobs.grad[1] == 0)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_all_empty_batch_is_zero_not_nan(loss_type):
    logprobs, old, advantages, _ = example()
    mask = torch.zeros(2, 3)
    ref = logprobs.detach() + 1.0
    settings = LossSettings(loss_type=loss_type, beta=0.1)
    loss, stats = policy_loss(logprobs, old, advantages, mask, settings, MAX_LEN, ref_logprobs=ref)
    loss.backward()
    assert loss.item() == 0.0
    assert stats == LossStats(kl=0.0, clip_ratio=0.0, tokens=0)
    assert torch.all(logprobs.grad == 0)


def test_completion_longer_than_max_len_rejected():
    logprobs, old, advantages, mask = example()
    with pytest.raises(ValueError, match="max_completion_length"):
        policy_loss(logprobs, old, advantages, mask, LossSettings(loss_type="dr_grpo"), 2)


def test_shape_mismatch_rejected():
    logprobs, old, _, mask = example()
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logprobs, old, torch.zeros(3), mask, LossSettings(), MAX_LEN)
    with pytest.raises(ValueError, match="completion_mask"):
        policy_loss(logprobs, old, torch.zeros(2), mask[:, :2], LossSettings(), MAX_LEN)


def test_settings_defaults():
    s = LossSettings()
    assert (s.loss_type, s.beta, s.epsilon_low, s.epsilon_high) == ("bnpo", 0.0, 0.2, 0.3)
    with pytest.raises(AttributeError):
        s.beta = 1.0  # frozen


@pytest.mark.parametrize(
    "field, value",
    [
        ("loss_type", "ppo"),
        ("beta", -0.1),
        ("epsilon_low", -0.2),
        ("epsilon_high", -1.0),
        ("beta", float("nan")),
    ],
)
def test_settings_validation_names_field_value_and_range(field, value):
    with pytest.raises(ValueError) as info:
        LossSettings(**{field: value})
    message = str(info.value)
    assert field in message
    assert repr(value) in message
    if field == "loss_type":
        assert all(t in message for t in LOSS_TYPES)
    else:
        assert ">= 0" in message


def test_token_logprobs_matches_naive_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11) * 5
    ids = torch.randint(0, 11, (2, 3))
    naive = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    out = token_logprobs(logits, ids)
    assert out.shape == (2, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out, naive)


def test_token_logprobs_low_precision_and_large_logits():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 50) * 3 + 1000.0  # large offsets: a naive exp would overflow
    ids = torch.randint(0, 50, (2, 4))
    naive = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, ids), naive)
    half = logits.to(torch.bfloat16)
    naive_half = half.float().log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    out = token_logprobs(half, ids)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, naive_half)


def test_token_logprobs_gradient_matches_naive():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 7, requires_grad=True)
    ids = torch.randint(0, 7, (2, 3))
    token_logprobs(logits, ids).sum().backward()
    grad = logits.grad.clone()
    logits.grad = None
    logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).sum().backward()
    torch.testing.assert_close(grad, logits.grad)


def test_token_logprobs_shape_mismatch_rejected():
    with pytest.raises(ValueError):
        token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_token_logprobs_are_those_of_the_tempered_policy():
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 13) * 4
    ids = torch.randint(0, 13, (2, 4))
    tempered = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    untempered = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    out = token_logprobs(logits, ids, 0.7)
    torch.testing.assert_close(out, tempered)
    assert not torch.allclose(out, untempered)  # the check can tell the two apart
    torch.testing.assert_close(token_logprobs(logits, ids, 1.0), untempered)


@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan"), float("inf")])
def test_token_logprobs_rejects_a_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(torch.zeros(1, 2, 5), torch.zeros(1, 2, dtype=torch.long), temperature)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("pad_value", [float("inf"), float("-inf"), 1e4, float("nan")])
def test_padding_holding_overflow_leaves_loss_gradient_and_stats_finite(loss_type, pad_value):
    """Whatever a padding position holds (an overflow in the policy, the old or
    the reference log-probabilities), it must not reach the loss: masking by
    multiplication gives inf * 0 = NaN there once beta > 0."""
    logprobs, old, advantages, mask = example()
    settings = LossSettings(loss_type=loss_type, beta=0.04)
    clean_ref = torch.full((2, 3), -0.5, dtype=torch.float64)
    clean_loss, clean_stats = policy_loss(logprobs, old, advantages, mask, settings, MAX_LEN, clean_ref)
    clean_loss.backward()
    clean_grad = logprobs.grad.clone()

    padding = mask == 0
    new = torch.where(padding, torch.tensor(-pad_value, dtype=torch.float64), logprobs.detach()).requires_grad_(True)
    old_bad = torch.where(padding, torch.tensor(pad_value, dtype=torch.float64), old)
    ref_bad = torch.where(padding, torch.tensor(pad_value, dtype=torch.float64), clean_ref)
    loss, stats = policy_loss(new, old_bad, advantages, mask, settings, MAX_LEN, ref_bad)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(new.grad).all()
    assert math.isfinite(stats.kl) and math.isfinite(stats.clip_ratio)
    # Padding changes nothing at all: same loss, gradient and stats as with clean padding.
    torch.testing.assert_close(loss, clean_loss)
    torch.testing.assert_close(new.grad, clean_grad)
    assert new.grad[padding].eq(0).all()
    assert stats == clean_stats
