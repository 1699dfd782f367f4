"""Groups of completions sampled with transformers ``generate``.

One routine for every place that samples with transformers: the orchestrator's
transformers rollout engine and a reward client's local trainer (FedMOA).
``sample`` pads prompts on the left (every prompt's last token in the last
column), draws ``n`` completions per prompt, and cuts each after its first EOS
token (kept). Log-probabilities, when asked for, are ``log_softmax(logits / T)``
of the raw logits ``generate`` reports (before its top-p warper), as the trainer
computes them; temperature 0 is greedy (its ``n`` completions are the same).
With a ``seed`` the call samples under its own seed and leaves the process's
random state as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Completion:
    """One completion: its tokens, their log-probabilities at the sampling temperature, and its text."""

    token_ids: list[int]
    logprobs: list[float]
    text: str


def sample(
    model, tokenizer, prompts: list[list[int]], *, n: int, temperature: float, top_p: float, max_tokens: int,
    seed: int | None = None, logprobs: bool = True,
) -> list[list[Completion]]:
    """``n`` completions of each prompt (token ids), in prompt order; ``logprobs=False`` leaves them empty."""
    device = next(model.parameters()).device
    if seed is None:
        return _sample(model, tokenizer, prompts, device, n, temperature, top_p, max_tokens, logprobs)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _sample(model, tokenizer, prompts, device, n, temperature, top_p, max_tokens, logprobs)


@torch.no_grad()
def _sample(model, tokenizer, prompts, device, n, temperature, top_p, max_tokens, want_logprobs):
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    greedy = temperature == 0
    # generate draws several sequences per prompt only when sampling: greedy rows repeat the prompt instead.
    rows = [p for p in prompts for _ in range(n)] if greedy else prompts
    width = max(len(p) for p in rows)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in rows], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows], device=device)
    out = model.generate(
        input_ids=ids, attention_mask=mask, do_sample=not greedy,
        temperature=None if greedy else temperature, top_p=None if greedy else top_p, top_k=None,
        max_new_tokens=max_tokens, num_return_sequences=1 if greedy else n, pad_token_id=pad,
        output_logits=want_logprobs, return_dict_in_generate=True,
    )
    new = out.sequences[:, width:]
    token_lp = None
    if want_logprobs:
        logits = torch.stack(out.logits, dim=1).float()
        token_lp = (logits if greedy else logits / temperature).log_softmax(-1)
        token_lp = token_lp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    groups: list[list[Completion]] = [[] for _ in prompts]
    for row, toks in enumerate(new.tolist()):
        length = next((i + 1 for i, t in enumerate(toks) if t in eos), len(toks))
        toks = toks[:length]
        groups[row // n].append(Completion(
            toks, token_lp[row, :length].tolist() if token_lp is not None else [],
            tokenizer.decode(toks, skip_special_tokens=True),
        ))
    return groups
