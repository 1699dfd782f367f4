"""Where the engine reads a policy version's weights: the trainer's own folder, or a copy streamed from it.

A weights source is called with a ``PolicyVersion`` and returns a local
Hugging Face folder holding it (a model, or a LoRA adapter: fedgrpo.models.adapters):

* ``shared_weights``: the trainer's ``weights_path`` itself; the trainer and
  the orchestrator share storage (one machine, or one volume mounted in both).
* ``StreamedWeights(stub, folder, base_dir, keep)``: no shared storage. A
  version is downloaded once, with the trainer's DownloadPolicyWeights, into
  ``folder/<run id>/v<N>``: every file is checked against the size and SHA-256
  its last chunk carries (``write_artifacts``), the files land in a staging
  folder first and the version appears by one rename, so a version cut off
  half-way is never loaded; a failed download is tried again (the trainer
  may be restarting) up to ``attempts`` times. Version 0 is ``base_dir``, the
  orchestrator's own copy of the base model. Only the newest ``keep``
  downloaded versions are kept (the newest is the run's exported model at its
  end).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import grpc

from fedgrpo.client.downloads import write_artifacts
from fedgrpo.client.errors import CorruptedDownload
from fedgrpo.models import prune_snapshots
from fedgrpo.models.adapters import ADAPTER_CONFIG, is_adapter
from fedgrpo.serving import RETRYABLE_CODES, retry_backoff
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import policy_trainer_pb2 as tpb
from fedgrpo.v1 import policy_trainer_pb2_grpc as tpb_grpc

log = logging.getLogger(__name__)

DOWNLOAD_SECONDS = 600.0  # one version's files, a large model on a slow link included
ABORTED = grpc.StatusCode.ABORTED  # a file changed under the trainer's stream


def shared_weights(version: common_pb2.PolicyVersion) -> Path:
    return Path(version.weights_path)


def policy_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a whole policy version: a model (config.json) or a LoRA adapter."""
    return (folder / "config.json").is_file() or is_adapter(folder)


class StreamedWeights:
    def __init__(self, stub: tpb_grpc.PolicyTrainerServiceStub, folder: Path, base_dir: Path, keep: int = 2,
                 attempts: int = 5) -> None:
        self.stub, self.folder, self.base_dir = stub, Path(folder), Path(base_dir)
        self.keep, self.attempts = keep, attempts
        self.bytes_received = 0  # over the process's life, for logs and benchmarks

    def __call__(self, version: common_pb2.PolicyVersion) -> Path:
        if version.version == 0:
            return self.base_dir
        runs = self.folder / version.run_id
        target = runs / f"v{version.version}"
        if policy_folder(target):
            return target
        for attempt in range(self.attempts):
            try:
                self._download(version, target)
                break
            except (grpc.RpcError, CorruptedDownload) as err:
                retry = isinstance(err, CorruptedDownload) or err.code() in RETRYABLE_CODES | {ABORTED}
                if not retry or attempt + 1 == self.attempts:
                    raise
                wait = retry_backoff(attempt)
                log.warning("run %s v%d: weights download failed (%s); again in %.1fs", version.run_id,
                            version.version, err, wait)
                time.sleep(wait)
        prune_snapshots(runs, self.keep)
        for other in self.folder.iterdir():  # another run's copies are not needed any more
            if other.is_dir() and other.name != version.run_id:
                shutil.rmtree(other, ignore_errors=True)
        return target

    def _download(self, version: common_pb2.PolicyVersion, target: Path) -> None:
        started = time.monotonic()
        staged = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staged, ignore_errors=True)
        received = 0

        def count(chunk) -> None:  # noqa: ANN001
            nonlocal received
            received += len(chunk.data)

        try:
            stream = self.stub.DownloadPolicyWeights(
                tpb.DownloadPolicyWeightsRequest(run_id=version.run_id, version=version.version),
                timeout=DOWNLOAD_SECONDS,
            )
            files = write_artifacts(stream, staged, on_chunk=count)
            if not policy_folder(staged):
                raise CorruptedDownload("config.json", "the trainer sent neither config.json nor "
                                        f"{ADAPTER_CONFIG}: not a model or adapter folder", "path")
            shutil.rmtree(target, ignore_errors=True)  # a folder left without its config
            staged.rename(target)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        self.bytes_received += received
        log.info("run %s v%d: %d files, %.1f MB streamed from the trainer in %.2fs", version.run_id,
                 version.version, len(files), received / 1e6, time.monotonic() - started)
