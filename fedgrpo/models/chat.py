"""The one way a question becomes prompt token ids: the model's chat template
with a generation prompt, as a plain list of ints (transformers 4 and 5 return
different container types from ``apply_chat_template``); a system prompt,
when given, goes first."""

from __future__ import annotations


def chat_prompt_ids(tokenizer, user_text: str, system: str | None = None) -> list[int]:
    messages = [{"role": "system", "content": system}] if system else []
    encoded = tokenizer.apply_chat_template(
        [*messages, {"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=True,
        return_dict=True,
    )
    return list(encoded["input_ids"])
