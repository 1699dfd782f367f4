"""A tiny policy that has something to learn: the tiny Llama, briefly taught
the answer format by supervised warm-up.

A randomly initialised model almost never writes a number, so every group of
candidates would score the same and GRPO would get no signal. Like a real
small instruct model, this one is first shown a few hundred chat-formatted
arithmetic questions with their answers (domains ``add1``, ``sub1``,
``mul1``; a reasoning-gym seed no bank, run or held-out set uses) for a fixed
number of steps: enough to answer in the right format and sometimes right,
far from always. Deterministic for a seed, offline, a few seconds on a CPU;
idempotent and atomic like ``build_tiny_model``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ._atomic import build_folder, is_complete
from .tiny import TINY_REQUIRED_FILES, _build_model, _build_tokenizer

log = logging.getLogger(__name__)

WARMUP_DOMAINS = ("add1", "sub1", "mul1")
WARMUP_SEED = 77_777


def _examples(tokenizer, per_domain: int) -> list[tuple[list[int], int]]:
    """(token ids of prompt + answer + eos, prompt length) pairs."""
    from fedgrpo.tasks import build_questions, user_message

    examples = []
    for domain in WARMUP_DOMAINS:
        for q in build_questions(domain, WARMUP_SEED, per_domain):
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": user_message(q.text)}], add_generation_prompt=True, tokenize=False
            )
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            a = tokenizer(q.entry["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            examples.append((p + a, len(p)))
    return examples


def build_tiny_policy(out_dir: Path, seed: int = 0, steps: int = 120, per_domain: int = 200) -> Path:
    out_dir = Path(out_dir)
    if is_complete(out_dir, TINY_REQUIRED_FILES):
        return out_dir
    import torch

    started = time.monotonic()
    torch.manual_seed(seed)
    tokenizer = _build_tokenizer()
    model = _build_model(tokenizer, seed)
    examples = _examples(tokenizer, per_domain)
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (seq, plen) in enumerate(examples):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, plen : len(seq)] = torch.tensor(seq[plen:])  # learn the answer only
        mask[i, : len(seq)] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(len(examples), (32,), generator=generator)
        loss = model(input_ids=ids[batch], attention_mask=mask[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    def write(staged: Path) -> None:
        model.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)

    published = build_folder(out_dir, TINY_REQUIRED_FILES, write, "tiny policy build")
    log.info(
        "tiny policy warmed up in %d steps (final loss %.3f), %.1fs", steps, loss.item(), time.monotonic() - started
    )
    return published
