"""DownloadRunArtifacts: a run's files, streamed in chunks to a caller anywhere.

``ArtifactServer(store, max_bytes, max_concurrent, chunk_bytes).download(request, context)``
answers one call, in this order:

* the request: ``run_id`` of 1-128 characters of A-Z a-z 0-9 . _ : - starting
  with a letter or digit (INVALID_ARGUMENT ``run_id``), then a known run
  (NOT_FOUND); at most ``MAX_PATHS`` ``paths`` of at most ``MAX_PATH_CHARS``
  characters, each relative with '/' between names and no empty, "." or ".."
  name, no NUL or backslash (INVALID_ARGUMENT ``paths[i]``: nothing outside
  the run folder can be named);
* at most ``max_concurrent`` downloads at once (each holds one of the
  server's worker threads while it streams): one more is RESOURCE_EXHAUSTED
  at once, like the port's own ``--max-concurrent-rpcs``;
* what is sent (``plan``): the regular files under the run folder, walked
  without following symbolic links (a link is neither sent nor followed, and
  each file is opened component by component with O_NOFOLLOW, so a link put
  in place meanwhile fails the call instead of leaking a file from elsewhere),
  leaving out temporary files (a name starting with '.' or ending in ".tmp":
  ``model.tmp/`` while the final policy is copied, ``run.json.tmp``,
  ``fedgrpo.atomic_file``'s temporaries). A path selects the file of that name
  or every file under the folder of that name ("model/" and "model" alike); a
  path that selects nothing is NOT_FOUND naming it;
* a run still queued or running sends only ``LIVE_FILES``: ``run.json``
  (replaced atomically) and ``metrics.jsonl`` (appended line by line; sent up
  to its last complete line), both read once into memory when the call
  starts. Any other path is FAILED_PRECONDITION until the run ends: its
  ``model/`` is copied (to ``model.tmp/``, then renamed) and its graph files
  are written as it ends, before its state changes. Once ended, nothing the
  orchestrator writes there changes again, and ``fedgrpo run`` writes its
  ``summary.json`` and ``reward_curve.png`` atomically, so every file is read
  as it is when its turn comes;
* more bytes than ``max_bytes`` in all is RESOURCE_EXHAUSTED before any chunk
  is sent (and, should a file grow meanwhile, when the sum passes it);
* the stream: files sorted by path, each as chunks of at most ``chunk_bytes``
  (``chunk_size(max_message_bytes)``: 1 MiB, less under a small message
  bound), the first chunk of the stream carrying ``total_files`` and
  ``total_bytes``, each file's last one ``last``, ``size`` and ``sha256``. A
  file that vanishes or shrinks while it is sent ends the call ABORTED (try
  again). The stream stops when the caller goes away.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import grpc

from fedgrpo.v1 import orchestrator_pb2 as pb

from .runs import TERMINAL, RunStore

__all__ = ["ArtifactServer", "ArtifactError", "Planned", "plan", "chunks", "selection", "check_run_id",
           "chunk_size", "regular_files", "open_beneath", "LIVE_FILES"]

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_PATHS = 64
MAX_PATH_CHARS = 1024
CHUNK_BYTES = 1024 * 1024
# What a queued or running run sends: the files kept consistent while it trains.
LIVE_FILES = ("metrics.jsonl", "run.json")
# A run folder holds a few dozen files; these bound a folder someone filled by hand (deeper folders are not read).
MAX_FILES = 10_000
MAX_DEPTH = 16

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO cannot hang us


class ArtifactError(Exception):
    """A refused download: the status and its message (``<field>: <problem>`` where a field is at fault)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def chunk_size(max_message_bytes: int) -> int:
    """Data per chunk: 1 MiB, or half the port's message bound where that is smaller (room for the rest)."""
    return max(1, min(CHUNK_BYTES, max_message_bytes // 2))


def check_run_id(run_id: str) -> str:
    if not run_id:
        raise ArtifactError(grpc.StatusCode.INVALID_ARGUMENT, "run_id: must not be empty")
    if not RUN_ID.fullmatch(run_id):
        raise ArtifactError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"run_id: got {run_id[:80]!r}, expected 1 to 128 characters of A-Z a-z 0-9 . _ : - "
                            "starting with a letter or digit (a run id such as 20250101-120000-a1b2c3)")
    return run_id


def selection(paths: Sequence[str]) -> list[str]:
    """The request's paths, checked (INVALID_ARGUMENT naming ``paths[i]``)."""
    if len(paths) > MAX_PATHS:
        raise ArtifactError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"paths: {len(paths)} paths, at most {MAX_PATHS}; select a folder instead of its files")
    chosen = []
    for i, path in enumerate(paths):
        def bad(problem: str) -> ArtifactError:
            return ArtifactError(grpc.StatusCode.INVALID_ARGUMENT, f"paths[{i}]: got {path[:80]!r}: {problem}; "
                                 "expected a file or folder of the run folder such as \"model/\" or \"metrics.jsonl\"")
        if not path:
            raise bad("empty (leave paths out for every file)")
        if len(path) > MAX_PATH_CHARS:
            raise bad(f"{len(path)} characters, at most {MAX_PATH_CHARS}")
        if "\x00" in path or "\\" in path:
            raise bad("a NUL or backslash; names are separated by '/'")
        if path.startswith("/"):
            raise bad("an absolute path; paths are relative to the run folder")
        names = path.removesuffix("/").split("/")
        if ".." in names:
            raise bad("a '..' name would leave the run folder")
        if any(n in ("", ".") for n in names):
            raise bad("an empty or '.' name")
        chosen.append(path)
    return chosen


def selects(entry: str, path: str) -> bool:
    """Whether the selection ``entry`` (a file, or a folder with or without its '/') takes the file ``path``."""
    entry = entry.removesuffix("/")
    return path == entry or path.startswith(entry + "/")


def temporary(name: str) -> bool:
    """A file or folder being written (not sent): hidden, or named *.tmp."""
    return name.startswith(".") or name.endswith(".tmp")


def regular_files(root: int) -> list[str]:
    """Paths (relative, '/'-separated, sorted) of the regular files under the open folder ``root``, symbolic
    links and temporary files left out."""
    found: list[str] = []

    def walk(fd: int, prefix: str, depth: int) -> None:
        with os.scandir(fd) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if temporary(entry.name) or entry.is_symlink():
                    continue
                if entry.is_file(follow_symlinks=False):
                    if len(found) >= MAX_FILES:
                        raise ArtifactError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            f"run folder: more than {MAX_FILES} files; select a part of it with paths")
                    found.append(prefix + entry.name)
                elif entry.is_dir(follow_symlinks=False) and depth < MAX_DEPTH:
                    try:
                        sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        continue  # gone, or swapped for a link, since it was listed
                    try:
                        walk(sub, f"{prefix}{entry.name}/", depth + 1)
                    finally:
                        os.close(sub)

    walk(root, "", 0)
    return sorted(found)


def open_beneath(root: int, path: str) -> int:
    """A read-only descriptor of the regular file ``path`` under the open folder ``root``, every name opened
    without following a link (OSError otherwise, as when the file is gone)."""
    names = path.split("/")
    fd = os.open(".", _DIR_FLAGS, dir_fd=root)
    try:
        for name in names[:-1]:
            inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        file_fd = os.open(names[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise IsADirectoryError(f"{path}: not a regular file")
    return file_fd


@dataclass
class Planned:
    """A file to send: its path, its size when planned and, for a live run, its content read then; or a
    descriptor opened when planned (read from there, whatever happens to the path meanwhile: taken over)."""

    path: str
    size: int
    data: bytes | None = None
    fd: int | None = None


def plan(root: int, run: pb.Run, entries: list[str], max_bytes: int) -> list[Planned]:
    """The files one call sends (see the module docstring); ArtifactError when it may send none."""
    live = run.state not in TERMINAL
    if live:
        state = pb.RunState.Name(run.state).removeprefix("RUN_STATE_").lower()
        for i, entry in enumerate(entries):
            if not any(selects(entry, f) for f in LIVE_FILES):
                raise ArtifactError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"paths[{i}]: {entry!r}: run {run.run_id} is {state}; until it ends only "
                    f"{' and '.join(LIVE_FILES)} can be downloaded (model/ and the graph files are written as "
                    "it ends: download them then)")
        candidates = [f for f in LIVE_FILES if _exists(root, f)]
    else:
        candidates = regular_files(root)
    for i, entry in enumerate(entries):
        if not any(selects(entry, f) for f in candidates):
            held = sorted({f.split("/")[0] + ("/" if "/" in f else "") for f in candidates})
            raise ArtifactError(
                grpc.StatusCode.NOT_FOUND,
                f"paths[{i}]: {entry!r} matches no file of run {run.run_id} (it holds {', '.join(held[:20]) or 'none'}"
                f"{', ...' if len(held) > 20 else ''})")
    chosen = [f for f in candidates if not entries or any(selects(e, f) for e in entries)]
    if not chosen:
        raise ArtifactError(grpc.StatusCode.NOT_FOUND, f"run_id: run {run.run_id}'s folder holds no file yet")
    planned: list[Planned] = []
    total = 0
    for path in chosen:
        try:
            fd = open_beneath(root, path)
        except OSError:
            continue  # gone since it was listed
        try:
            size = os.fstat(fd).st_size
            _check_budget(total + size, max_bytes, len(chosen))
            data = None
            if live:  # read now: what is sent is one consistent state of the file
                data = _read(fd, size)
                if path == "metrics.jsonl":
                    data = data[: data.rfind(b"\n") + 1]  # a line being appended is left for the next call
                size = len(data)
        finally:
            os.close(fd)
        total += size
        planned.append(Planned(path, size, data))
    return planned


def _exists(root: int, path: str) -> bool:
    try:
        os.close(open_beneath(root, path))
        return True
    except OSError:
        return False


def _read(fd: int, size: int) -> bytes:
    with os.fdopen(os.dup(fd), "rb") as f:
        return f.read(size)


def _check_budget(total: int, max_bytes: int, files: int) -> None:
    if total > max_bytes:
        raise ArtifactError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"paths: the selection ({files} files) holds more than {max_bytes} bytes, what this orchestrator sends "
            "in one call (--max-download-bytes); select less with paths, a folder or a file per call")


def chunks(
    root: int, planned: list[Planned], chunk_bytes: int, max_bytes: int, is_active: Callable[[], bool] = lambda: True,
) -> Iterator[pb.ArtifactChunk]:
    """The stream of ``planned`` (see the module docstring); ArtifactError if a file changes under it."""
    total_bytes = sum(p.size for p in planned)
    first, sent = True, 0
    for item in planned:
        with _reader(root, item) as f:
            size = os.fstat(f.fileno()).st_size if item.data is None else item.size
            sent += size
            _check_budget(sent, max_bytes, len(planned))
            digest, offset = hashlib.sha256(), 0
            while True:
                want = min(chunk_bytes, size - offset)
                data = f.read(want)
                if len(data) < want:
                    raise ArtifactError(grpc.StatusCode.ABORTED, f"{item.path}: shrank while it was sent; try again")
                digest.update(data)
                chunk = pb.ArtifactChunk(path=item.path, offset=offset, data=data)
                offset += len(data)
                if offset == size:
                    chunk.last, chunk.size, chunk.sha256 = True, size, digest.hexdigest()
                if first:
                    chunk.total_files, chunk.total_bytes, first = len(planned), total_bytes, False
                if not is_active():  # the caller went away
                    return
                yield chunk
                if chunk.last:
                    break


def _reader(root: int, item: Planned) -> BinaryIO:
    """The content to send: read when planned (a live run), else the file as it is now."""
    if item.data is not None:
        return io.BytesIO(item.data)
    if item.fd is not None:
        fd, item.fd = item.fd, None
        return os.fdopen(fd, "rb")
    try:
        return os.fdopen(open_beneath(root, item.path), "rb")
    except OSError as err:
        raise ArtifactError(grpc.StatusCode.ABORTED,
                            f"{item.path}: gone while the run's files were sent ({err.strerror or err}); try again")


class ArtifactServer:
    """DownloadRunArtifacts over a run store, with its bounds (see the module docstring)."""

    def __init__(self, store: RunStore, max_bytes: int, max_concurrent: int, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.store, self.max_bytes, self.chunk_bytes = store, max_bytes, chunk_bytes
        self.max_concurrent = max_concurrent
        self.slots = threading.BoundedSemaphore(max_concurrent)

    def download(
        self, request: pb.DownloadRunArtifactsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ArtifactChunk]:
        try:
            run_id = check_run_id(request.run_id)
            entries = selection(request.paths)
            run = self.store.get(run_id)
            if run is None:
                raise ArtifactError(grpc.StatusCode.NOT_FOUND, f"run_id {run_id!r}: no such run")
        except ArtifactError as err:
            context.abort(err.code, err.message)
        if not self.slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.max_concurrent} downloads are streaming (--max-concurrent-downloads); retry later")
        try:
            yield from self._stream(run, entries, context)
        finally:
            self.slots.release()

    def _stream(self, run: pb.Run, entries: list[str], context: grpc.ServicerContext) -> Iterator[pb.ArtifactChunk]:
        folder = self.store.run_dir(run.run_id)
        try:
            root = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"run_id {run.run_id!r}: the run's folder is gone")
        try:
            try:
                planned = plan(root, run, entries, self.max_bytes)
            except ArtifactError as err:
                context.abort(err.code, err.message)
            sent = 0
            try:
                for chunk in chunks(root, planned, self.chunk_bytes, self.max_bytes, context.is_active):
                    sent += len(chunk.data)
                    yield chunk
            except ArtifactError as err:
                context.abort(err.code, err.message)
            log.info("run %s: %d files, %d bytes sent to %s%s", run.run_id, len(planned), sent, context.peer(),
                     f" (paths {entries})" if entries else "")
        finally:
            os.close(root)
