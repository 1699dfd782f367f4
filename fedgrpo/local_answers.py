"""Answers of a local model to labelled rows: one engine, the prompt format, batches.

``answer_rows(rows, model_dir, prompt_format, sampling, ...)`` starts a rollout
engine (the orchestrator's: vLLM or transformers) on ``model_dir``, puts each
row's question to it with the model's chat template (the format's instruction
after the question; the row's own system prompt, else the format's), and
yields one list of ``(row, completions)`` per batch of ``batch`` rows, in
order; the engine is closed when the iteration ends or is abandoned. Used by
`fedgrpo evaluate` (greedy, one answer) and `fedgrpo reward-model
preferences` (several samples per question).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from fedgrpo.data.files import Row

__all__ = ["answer_rows"]


def answer_rows(
    rows: Sequence[Row], model_dir: Path, prompt_format, sampling, *, backend: str = "transformers",
    device: str = "cpu", dtype: str = "float32", seed: int = 0, batch: int = 32,
) -> Iterator[list[tuple[Row, list]]]:
    from transformers import AutoTokenizer

    from fedgrpo.models import chat_prompt_ids
    from fedgrpo.services.orchestrator.rollout import make_engine

    engine = make_engine(backend, model_dir, device=device, dtype=dtype, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    try:
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            prompts = [
                chat_prompt_ids(tokenizer, prompt_format.user_text(r.question), r.system or prompt_format.system)
                for r in chunk
            ]
            yield list(zip(chunk, engine.generate(prompts, sampling), strict=True))
    finally:
        engine.close()
