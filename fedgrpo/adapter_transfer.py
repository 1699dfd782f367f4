"""Adapters on the wire: serialised, cut into checksummed chunks, checked on arrival.

Contract
--------
``encode(tensors)`` -> safetensors bytes (no pickle: a hostile sender can make
``decode`` fail, never run code). ``chunks(payload, chunk_bytes)`` cuts the
bytes into ``Chunk(index, data, sha256)`` pieces; ``Assembler(total_bytes,
sha256, max_bytes)`` takes them back in order, checking each chunk's own
digest, its index, the running size against the declared total and the
bound, and ``finish()`` checks the whole payload's digest: any mismatch raises
``BadAdapter`` with what was wrong, and nothing partial is ever returned.

``check_adapter(tensors, reference)`` accepts an adapter only if it holds
exactly the reference's tensor names, each with the reference's shape, all
values finite; otherwise ``BadAdapter`` names the first offending tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from safetensors.torch import load as _load
from safetensors.torch import save as _save

DEFAULT_CHUNK_BYTES = 1 << 20


class BadAdapter(ValueError):
    """An adapter (or its transfer) that cannot be accepted; the message says why."""


@dataclass(frozen=True)
class Chunk:
    index: int
    data: bytes
    sha256: str


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode(tensors: Mapping[str, torch.Tensor]) -> bytes:
    return _save({name: t.detach().contiguous().cpu() for name, t in tensors.items()})


def decode(payload: bytes) -> dict[str, torch.Tensor]:
    try:
        return _load(payload)
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise BadAdapter(f"not a safetensors payload: {err}") from err


def chunks(payload: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Chunk]:
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes: must be > 0, got {chunk_bytes}")
    for index, start in enumerate(range(0, max(len(payload), 1), chunk_bytes)):
        data = payload[start:start + chunk_bytes]
        yield Chunk(index, data, sha256(data))


class Assembler:
    """Takes the chunks of one payload back, in order, checking as it goes (module docstring)."""

    def __init__(self, total_bytes: int, digest: str, max_bytes: int) -> None:
        if not 0 < total_bytes <= max_bytes:
            raise BadAdapter(f"total_bytes: must be in 1..{max_bytes}, got {total_bytes}")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BadAdapter(f"sha256: must be 64 lowercase hex digits, got {digest[:80]!r}")
        self.total_bytes, self.digest = total_bytes, digest
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, chunk: Chunk) -> None:
        if chunk.index != len(self.parts):
            raise BadAdapter(f"chunk index: expected {len(self.parts)}, got {chunk.index}")
        if sha256(chunk.data) != chunk.sha256:
            raise BadAdapter(f"chunk {chunk.index}: its sha256 does not match its data")
        self.size += len(chunk.data)
        if self.size > self.total_bytes:
            raise BadAdapter(f"chunk {chunk.index}: {self.size} bytes so far, more than the {self.total_bytes} "
                             "declared")
        self.parts.append(chunk.data)

    def finish(self) -> bytes:
        if self.size != self.total_bytes:
            raise BadAdapter(f"total_bytes: declared {self.total_bytes}, received {self.size}")
        payload = b"".join(self.parts)
        if sha256(payload) != self.digest:
            raise BadAdapter("sha256: the payload's digest does not match the declared one")
        return payload


def check_adapter(tensors: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> None:
    missing = sorted(set(reference) - set(tensors))
    extra = sorted(set(tensors) - set(reference))
    if missing:
        raise BadAdapter(f"tensors: missing {missing[:3]} ({len(missing)} in all)")
    if extra:
        raise BadAdapter(f"tensors: unexpected {extra[:3]} ({len(extra)} in all)")
    for name, ref in reference.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise BadAdapter(f"{name}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
        if not got.is_floating_point():
            raise BadAdapter(f"{name}: dtype {got.dtype}, expected a floating-point tensor")
        if not bool(torch.isfinite(got).all()):
            raise BadAdapter(f"{name}: holds NaN or infinite values")
