"""Adapters on the wire: chunks and checksums, and the checks an adapter must pass."""

import pytest
import torch

from fedgrpo.adapter_transfer import Assembler, BadAdapter, Chunk, check_adapter, chunks, decode, encode, sha256

REFERENCE = {"layer.lora_A.weight": torch.zeros(4, 16), "layer.lora_B.weight": torch.zeros(16, 4)}


def adapter(**changes):
    out = {name: torch.randn_like(t) for name, t in REFERENCE.items()}
    out.update(changes)
    return out


def test_round_trip_in_small_chunks():
    sent = adapter()
    payload = encode(sent)
    pieces = list(chunks(payload, chunk_bytes=100))
    assert len(pieces) > 3
    asm = Assembler(len(payload), sha256(payload), max_bytes=1 << 20)
    for piece in pieces:
        asm.add(piece)
    got = decode(asm.finish())
    assert set(got) == set(sent) and all(torch.equal(got[k], sent[k]) for k in sent)


def test_a_chunk_whose_checksum_does_not_match_is_refused():
    payload = encode(adapter())
    first = next(chunks(payload, 64))
    asm = Assembler(len(payload), sha256(payload), 1 << 20)
    with pytest.raises(BadAdapter, match="chunk 0: its sha256"):
        asm.add(Chunk(0, b"x" + first.data[1:], first.sha256))


def test_wrong_order_oversize_and_whole_digest_are_refused():
    payload = encode(adapter())
    pieces = list(chunks(payload, 64))
    with pytest.raises(BadAdapter, match="chunk index: expected 0, got 1"):
        Assembler(len(payload), sha256(payload), 1 << 20).add(pieces[1])
    short = Assembler(64, sha256(payload), 1 << 20)
    short.add(pieces[0])
    with pytest.raises(BadAdapter, match="more than the 64 declared"):
        short.add(pieces[1])
    wrong = Assembler(len(payload), sha256(b"other"), 1 << 20)
    for piece in pieces:
        wrong.add(piece)
    with pytest.raises(BadAdapter, match="digest does not match"):
        wrong.finish()
    with pytest.raises(BadAdapter, match="total_bytes: must be in 1..1000"):
        Assembler(5000, sha256(payload), max_bytes=1000)
    with pytest.raises(BadAdapter, match="not a safetensors payload"):
        decode(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")


@pytest.mark.parametrize("bad, message", [
    (adapter(**{"layer.lora_A.weight": torch.zeros(4, 15)}), r"lora_A.weight: shape \(4, 15\), expected \(4, 16\)"),
    (adapter(**{"layer.lora_B.weight": torch.full((16, 4), float("nan"))}), "lora_B.weight: holds NaN"),
    (adapter(**{"layer.lora_B.weight": torch.full((16, 4), float("inf"))}), "lora_B.weight: holds NaN or infinite"),
    (adapter(**{"layer.lora_B.weight": torch.zeros(16, 4, dtype=torch.int64)}), "dtype torch.int64"),
    ({"layer.lora_A.weight": torch.zeros(4, 16)}, "missing"),
    (adapter(extra=torch.zeros(1)), "unexpected"),
])
def test_bad_adapters_are_refused(bad, message):
    with pytest.raises(BadAdapter, match=message):
        check_adapter(bad, REFERENCE)


def test_a_good_adapter_passes():
    check_adapter(adapter(), REFERENCE)
