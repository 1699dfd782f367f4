"""A tiny, randomly initialised Llama for tests and smoke runs.

Contract of :func:`build_tiny_model`:

* Fully offline and deterministic: the same ``seed`` gives bit-identical
  weights; nothing is downloaded.
* The folder is a standard Hugging Face checkpoint (``config.json``,
  ``generation_config.json``, ``model.safetensors``, tokenizer files incl.
  ``chat_template.jinja``) loadable by ``transformers`` (``AutoModelForCausalLM``,
  ``AutoTokenizer``) and by vLLM.
* Model: ``LlamaConfig`` with hidden 128, 2 layers, 4 heads, 2 KV heads
  (head_dim 32), intermediate 256, 512 positions, tied embeddings, float32
  (~0.3 M parameters).  head_dim is 32 because vLLM's CPU attention backend
  only supports head sizes 32, 64, 80, 96, 112, 128, ... (16 is rejected at
  the first forward pass).
* Tokenizer: byte-level BPE over the 256 byte symbols with no merges (every
  UTF-8 byte is one token), plus the special tokens ``<|endoftext|>`` (id 0,
  pad), ``<|im_start|>`` (id 1, bos) and ``<|im_end|>`` (id 2, eos) -- the same
  ids SmolLM2 uses.  The chat template is SmolLM2-Instruct's ChatML format
  (``<|im_start|>{role}\\n{content}<|im_end|>\\n`` ... ``<|im_start|>assistant\\n``)
  without SmolLM2's default system prompt.
* Idempotent and safe under concurrency: if ``out_dir`` already holds a
  complete model it is returned untouched; otherwise the model is built in a
  hidden temporary sibling folder and renamed into place, so concurrent
  callers never observe a partially written folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ._atomic import build_folder, is_complete

__all__ = [
    "build_tiny_model",
    "CHATML_TEMPLATE",
    "TINY_REQUIRED_FILES",
    "SPECIAL_TOKENS",
]

log = logging.getLogger(__name__)

#: SmolLM2-Instruct's ChatML template minus its default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Special tokens in id order (ids 0, 1, 2).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

#: Files whose presence marks a complete tiny-model folder.
TINY_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-symbol map (the ByteLevel pre-tokenizer alphabet)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # ids are stable: byte b -> id len(SPECIAL_TOKENS) + b.
    byte_to_symbol = _bytes_to_unicode()
    assert set(byte_to_symbol.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b in range(256):
        vocab[byte_to_symbol[b]] = len(SPECIAL_TOKENS) + b

    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    return hf_tok


def _build_model(tokenizer, seed: int):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,  # head_dim 32: the smallest vLLM CPU attention supports
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
        torch_dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build (or reuse) the tiny Llama at ``out_dir`` and return ``out_dir``.

    See the module docstring for the full contract.
    """
    out_dir = Path(out_dir)
    if is_complete(out_dir, TINY_REQUIRED_FILES):
        return out_dir

    def write(staged: Path) -> None:
        tokenizer = _build_tokenizer()
        _build_model(tokenizer, seed).save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)

    return build_folder(out_dir, TINY_REQUIRED_FILES, write, "tiny model build")
