"""Where a parameter-exchange run meets its clients: rounds offered, adapters down and up.

Contract
--------
The run loop ``offer``s a round: its ``TrainingRound`` message (the work
asked), the global adapter's bytes and the clients it goes to. A client's
``fetch(identity, wait)`` returns the newest round offered to it that it has
not fetched yet (or None after ``wait`` seconds); ``download(identity,
round_id)`` yields the global adapter in checksummed chunks, to a client
the round was sent to; ``receive(identity, requests)`` reads one
SubmitAdapter stream: the header is checked against the round book first
(``rounds.check``: not sent, answered already, closed, unknown -> the
``RoundError`` with its status, and nothing changes), then the chunks are
assembled (``fedgrpo.adapter_transfer``: per-chunk and whole checksums, the
declared size, at most twice the global adapter's size) and the adapter is
checked against the global one (same tensors and shapes, finite). A bad
adapter is rejected in the round book (logged with the client's identity; it
is that client's answer) and raised as ``BadAdapter``; a good one is
submitted with its header. ``bytes_down``/``bytes_up`` count each client's
adapter bytes per round id. A client may download a round's adapter at most
``MAX_DOWNLOADS`` times and upload one adapter at a time (RESOURCE_EXHAUSTED
past that).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from fedgrpo.adapter_transfer import Assembler, BadAdapter, Chunk, check_adapter, chunks, decode
from fedgrpo.v1 import federation_pb2 as fpb

from .rounds import RoundClosed, Rounds, TooMany, UnknownRound

# A client needs one download of a round's adapter (a few more after a broken connection) and one upload
# at a time: past these bounds a call is RESOURCE_EXHAUSTED, so no member can hold the port's threads or
# bandwidth with repeats.
MAX_DOWNLOADS = 3


@dataclass(frozen=True)
class Submission:
    """An accepted adapter and what its client said of it."""

    tensors: dict[str, torch.Tensor]
    header: fpb.AdapterHeader
    bytes: int


@dataclass
class _Offer:
    message: fpb.TrainingRound
    payload: bytes
    reference: dict[str, torch.Tensor]
    participants: frozenset[str]
    deadline: float
    fetched: set[str] = field(default_factory=set)
    downloads: dict[str, int] = field(default_factory=dict)
    uploading: set[str] = field(default_factory=set)


class AdapterExchange:
    def __init__(self) -> None:
        self.rounds: Rounds | None = None
        self._offer: _Offer | None = None
        self._changed = threading.Condition()
        self.bytes_down: dict[str, dict[str, int]] = {}
        self.bytes_up: dict[str, dict[str, int]] = {}

    def offer(self, rounds: Rounds, message: fpb.TrainingRound, payload: bytes, participants: Collection[str],
              deadline: float) -> None:
        reference = decode(payload)
        with self._changed:
            self.rounds = rounds
            self._offer = _Offer(message, payload, reference, frozenset(participants), deadline)
            self.bytes_down[message.round_id], self.bytes_up[message.round_id] = {}, {}
            self._changed.notify_all()

    def withdraw(self) -> None:
        """No round is on offer any more (the run ended)."""
        with self._changed:
            self._offer = None

    def fetch(self, identity: str, wait_seconds: float) -> fpb.TrainingRound | None:
        end = time.monotonic() + wait_seconds
        with self._changed:
            while True:
                offer = self._offer
                if offer is not None and identity in offer.participants and identity not in offer.fetched:
                    left = offer.deadline - time.monotonic()
                    if left > 0:
                        offer.fetched.add(identity)
                        sent = fpb.TrainingRound()
                        sent.CopyFrom(offer.message)
                        sent.deadline_seconds = left
                        return sent
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def _offer_for(self, identity: str, round_id: str) -> _Offer:
        offer = self._offer
        if offer is None or offer.message.round_id != round_id:
            raise UnknownRound(f"round_id: {round_id!r} is not the round on offer")
        assert self.rounds is not None
        self.rounds.check(identity, round_id)  # not sent, answered, closed: its own error
        return offer

    def download(self, identity: str, round_id: str) -> Iterator[fpb.AdapterChunk]:
        with self._changed:
            offer = self._offer_for(identity, round_id)
            offer.downloads[identity] = offer.downloads.get(identity, 0) + 1
            if offer.downloads[identity] > MAX_DOWNLOADS:
                raise TooMany(f"round_id: {identity} downloaded round {round_id} {MAX_DOWNLOADS} times already")
        for piece in chunks(offer.payload):
            with self._changed:
                counts = self.bytes_down.setdefault(round_id, {})
                counts[identity] = counts.get(identity, 0) + len(piece.data)
            yield fpb.AdapterChunk(index=piece.index, data=piece.data, sha256=piece.sha256)

    def receive(self, identity: str, requests: Iterable[fpb.SubmitAdapterRequest], session_id: str) -> Submission:
        stream = iter(requests)
        first = next(stream, None)
        if first is None or first.WhichOneof("part") != "header":
            raise BadAdapter("header: the first message of SubmitAdapter must carry the header")
        if first.session_id != session_id:
            raise BadAdapter("session_id: every message must name the caller's session")
        header = first.header
        with self._changed:
            offer = self._offer_for(identity, header.round_id)
            if identity in offer.uploading:
                raise TooMany(f"round_id: {identity} is already uploading an adapter for round {header.round_id}")
            offer.uploading.add(identity)
        try:
            return self._assemble(identity, stream, session_id, header, offer)
        finally:
            with self._changed:
                offer.uploading.discard(identity)

    def _assemble(self, identity: str, stream: Iterator[fpb.SubmitAdapterRequest], session_id: str,
                  header: fpb.AdapterHeader, offer: _Offer) -> Submission:
        rounds = self.rounds
        assert rounds is not None
        try:
            assembler = Assembler(header.total_bytes, header.sha256, max_bytes=2 * len(offer.payload) + (64 << 10))
            for request in stream:
                if request.session_id != session_id or request.WhichOneof("part") != "chunk":
                    raise BadAdapter("chunk: after the header every message must be a chunk of the caller's session")
                if time.monotonic() > offer.deadline:
                    raise RoundClosed(f"round_id: the deadline of round {header.round_id} passed during the upload")
                c = request.chunk
                assembler.add(Chunk(c.index, c.data, c.sha256))
                with self._changed:
                    counts = self.bytes_up.setdefault(header.round_id, {})
                    counts[identity] = counts.get(identity, 0) + len(c.data)
            tensors = decode(assembler.finish())
            check_adapter(tensors, offer.reference)
        except BadAdapter as err:
            rounds.reject(identity, header.round_id, str(err))
            raise
        submission = Submission(tensors, header, header.total_bytes)
        rounds.submit(identity, header.round_id, submission)
        return submission

