"""DownloadPolicyWeights: one kept policy snapshot, streamed to the orchestrator.

``WeightsServer(trainer, max_concurrent, chunk_bytes).download(request, context)``
answers one call:

* the request: ``run_id`` must be the trainer's current run (INVALID_ARGUMENT
  for a malformed one, FAILED_PRECONDITION for another run, as Train does),
  ``version`` between 1 and the current version (INVALID_ARGUMENT naming
  ``version``; 0 is the base model, which the orchestrator holds itself);
  a version no longer kept (``--keep-snapshots``) is NOT_FOUND;
* at most ``max_concurrent`` downloads at once, one more is RESOURCE_EXHAUSTED;
* every regular file of the snapshot folder is opened before the first chunk
  is sent, so a snapshot pruned meanwhile (a newer version was published)
  is still sent whole, as it was;
* the stream: :func:`~fedgrpo.services.orchestrator.artifacts.chunks`, as
  DownloadRunArtifacts sends a run's files (files by path, chunks of at most
  ``chunk_bytes``, each file's last chunk with its size and SHA-256), which
  :func:`fedgrpo.client.downloads.write_artifacts` checks and writes.

It takes no trainer lock: a download proceeds while the next step trains.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator

import grpc

from fedgrpo import serving
from fedgrpo.services.orchestrator.artifacts import ArtifactError, Planned, chunks, open_beneath, regular_files
from fedgrpo.v1 import orchestrator_pb2 as opb
from fedgrpo.v1 import policy_trainer_pb2 as pb

from .trainer import PolicyTrainer

log = logging.getLogger(__name__)

MAX_SNAPSHOT_BYTES = 1 << 42  # 4 TiB: a bound on what one call sends, never reached by a real snapshot


def open_snapshot(folder: os.PathLike | str) -> list[Planned]:
    """Every regular file of ``folder``, opened now (FileNotFoundError if the folder is gone)."""
    root = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    opened: list[Planned] = []
    try:
        for path in regular_files(root):
            fd = open_beneath(root, path)
            opened.append(Planned(path, os.fstat(fd).st_size, fd=fd))
    except BaseException:
        close(opened)
        raise
    finally:
        os.close(root)
    return opened


def close(files: list[Planned]) -> None:
    for item in files:
        if item.fd is not None:
            os.close(item.fd)
            item.fd = None


class WeightsServer:
    def __init__(self, trainer: PolicyTrainer, max_concurrent: int = 2, chunk_bytes: int = 1024 * 1024) -> None:
        self.trainer, self.max_concurrent, self.chunk_bytes = trainer, max_concurrent, chunk_bytes
        self.slots = threading.BoundedSemaphore(max_concurrent)

    def download(
        self, request: pb.DownloadPolicyWeightsRequest, context: grpc.ServicerContext
    ) -> Iterator[opb.ArtifactChunk]:
        run_id, current = self.trainer.run_id, self.trainer.version
        if run_id is None or request.run_id != run_id:
            serving.failed_precondition(context, f"run_id {request.run_id}: not this trainer's current run "
                                        f"({run_id or 'none started'}); its weights are no longer served")
        if not 1 <= request.version <= current:
            serving.invalid(context, "version", f"got {request.version}, expected 1 to {current} (run {run_id}'s "
                            "current version); 0 is the base model, which the orchestrator holds")
        if not self.slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.max_concurrent} weight downloads are streaming; retry later")
        files: list[Planned] = []
        try:
            try:
                files = open_snapshot(self.trainer.snapshot_path(run_id, request.version))
            except FileNotFoundError:
                serving.not_found(context, f"version {request.version} of run {run_id} is no longer kept: this "
                                  f"trainer keeps its newest {self.trainer.keep_snapshots} (--keep-snapshots)")
            sent = 0
            for chunk in chunks(-1, files, self.chunk_bytes, MAX_SNAPSHOT_BYTES, context.is_active):
                sent += len(chunk.data)
                yield chunk
            log.info("run %s v%d: %d files, %d bytes sent to %s", run_id, request.version, len(files), sent,
                     context.peer())
        except ArtifactError as err:
            context.abort(err.code, err.message)
        finally:
            close(files)
            self.slots.release()
