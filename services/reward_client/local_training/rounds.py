"""One training round as a client takes it: download the global adapter, train, send the adapter back.

``take_round(stub, session, round, local, max_adapter_bytes)`` downloads the
round's global adapter (``DownloadAdapter``: checksummed chunks, assembled
and checked by ``fedgrpo.adapter_transfer``; a corrupt download is dropped,
logged, and the round is not answered), trains it with ``local.train_round``
and streams the result back (``SubmitAdapter``: a header with its size,
digest, rollouts and objective weights, then 1 MiB chunks) before the
round's deadline. Returns whether the orchestrator accepted it; a refusal
is logged with the status and reason the orchestrator gave.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc

from fedgrpo.adapter_transfer import Assembler, BadAdapter, Chunk, chunks, decode, encode, sha256
from fedgrpo.v1 import federation_pb2 as fpb
from fedgrpo.v1 import federation_pb2_grpc as fpb_grpc

from .trainer import LocalTrainer

log = logging.getLogger(__name__)



def download(stub: fpb_grpc.FederationServiceStub, session: str, r: fpb.TrainingRound, max_bytes: int,
             timeout: float) -> bytes:
    assembler = Assembler(r.adapter_bytes, r.adapter_sha256, max_bytes)
    for c in stub.DownloadAdapter(fpb.DownloadAdapterRequest(session_id=session, round_id=r.round_id),
                                  timeout=timeout):
        assembler.add(Chunk(c.index, c.data, c.sha256))
    return assembler.finish()


def submission(session: str, round_id: str, payload: bytes, rollouts: int, weights: dict[str, float],
               mean_reward: float) -> Iterator[fpb.SubmitAdapterRequest]:
    header = fpb.AdapterHeader(round_id=round_id, total_bytes=len(payload), sha256=sha256(payload),
                               rollouts=rollouts, objective_weights=weights, mean_reward=mean_reward)
    yield fpb.SubmitAdapterRequest(session_id=session, header=header)
    for piece in chunks(payload):
        yield fpb.SubmitAdapterRequest(session_id=session, chunk=fpb.AdapterChunk(
            index=piece.index, data=piece.data, sha256=piece.sha256))


def take_round(stub: fpb_grpc.FederationServiceStub, session: str, r: fpb.TrainingRound, local: LocalTrainer,
               max_adapter_bytes: int) -> bool:
    deadline = time.monotonic() + r.deadline_seconds
    log.info("round %d (attempt %d): %d local steps, %d adapter bytes to fetch", r.round, r.attempt, r.local_steps,
             r.adapter_bytes)
    try:
        global_adapter = decode(download(stub, session, r, max_adapter_bytes, max(1.0, r.deadline_seconds)))
    except BadAdapter as err:
        log.error("round %s: the global adapter failed its checks, round not answered: %s", r.round_id, err)
        return False
    except grpc.RpcError as err:
        log.warning("round %s: download failed: %s: %s", r.round_id, err.code().name, err.details())
        return False
    try:
        result = local.train_round(r, global_adapter)
    except Exception:  # one round must not take the client down
        log.exception("round %s: local training failed", r.round_id)
        return False
    left = deadline - time.monotonic()
    if left <= 0:
        log.warning("round %s: trained in %.0fs, past the round's deadline: not sent", r.round_id, result.seconds)
        return False
    payload = encode(result.adapter)
    try:
        stub.SubmitAdapter(submission(session, r.round_id, payload, result.rollouts, result.objective_weights,
                                      result.mean_reward), timeout=left)
    except grpc.RpcError as err:
        log.warning("round %s: adapter refused: %s: %s", r.round_id, err.code().name, err.details())
        return False
    log.info("round %d: adapter sent (%d bytes, %.0fs), mean reward %.3f, objective weights %s", r.round,
             len(payload), result.seconds, result.mean_reward,
             {k: round(v, 3) for k, v in result.objective_weights.items()})
    return True
