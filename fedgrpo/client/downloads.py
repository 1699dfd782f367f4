"""A run's files from DownloadRunArtifacts' chunks: each checked, each written atomically.

``write_artifacts(chunks, dest_dir)`` puts a stream of ``ArtifactChunk`` back
together under ``dest_dir``: chunks of a file must come in order, and its
last one carries the size and SHA-256 the received bytes must match
(:func:`verify_file`), else :class:`~fedgrpo.client.errors.CorruptedDownload`
is raised and nothing of that file is written; a path that would land
outside ``dest_dir`` is refused the same way. Returns the written paths.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from pathlib import Path

from fedgrpo.atomic_file import atomic_writer
from fedgrpo.client.errors import CorruptedDownload
from fedgrpo.v1 import orchestrator_pb2 as pb


def verify_file(path: str, received: int, sha256: str, last: pb.ArtifactChunk) -> None:
    """Raise :class:`CorruptedDownload` unless ``received`` bytes hashing to ``sha256`` (hex) are the file
    whose ``last`` chunk (with its size and SHA-256) the server sent."""
    if received != last.size:
        raise CorruptedDownload(path, f"{received} bytes received, the server sent {last.size}", "size")
    if not hmac.compare_digest(sha256, last.sha256):
        raise CorruptedDownload(path, f"SHA-256 {sha256} of the bytes received, the server sent {last.sha256!r}",
                                "sha256")


def _destination(dest_dir: Path, path: str) -> Path:
    """Where the run's file ``path`` goes under ``dest_dir``; a path that would leave it is refused."""
    names = path.split("/")
    if not path or path.startswith("/") or "\\" in path or "\x00" in path or any(n in ("", ".", "..") for n in names):
        raise CorruptedDownload(path or "''", "not a relative path of the run folder", "path")
    target = dest_dir.joinpath(*names)
    if not target.resolve().is_relative_to(dest_dir.resolve()):  # a link in dest_dir leading elsewhere
        raise CorruptedDownload(path, f"would be written outside {dest_dir} (through a symbolic link there)", "path")
    return target


def write_artifacts(chunks: Iterable[pb.ArtifactChunk], dest_dir: Path | str,
                    on_chunk: Callable[[pb.ArtifactChunk], None] | None = None) -> list[Path]:
    """Write a DownloadRunArtifacts stream's files under ``dest_dir`` (made if missing); the written paths.

    Each file goes to a temporary file beside its place and replaces it only once its chunks came in order
    (offsets without gaps) and its size and SHA-256 are those of its last chunk (:func:`verify_file`);
    otherwise :class:`CorruptedDownload`, and that file is not written. Files verified before a failure stay.
    ``on_chunk`` sees every chunk (the first carries ``total_files`` and ``total_bytes``)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    seen: set[str] = set()
    stream = iter(chunks)
    for chunk in stream:  # the first chunk of a file
        path = chunk.path
        if path in seen:
            raise CorruptedDownload(path, "sent twice in one stream", "path")
        target = _destination(dest_dir, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, received = hashlib.sha256(), 0
        with atomic_writer(target, private=False) as f:
            while True:
                if chunk.path != path:
                    raise CorruptedDownload(path, f"its last chunk never came ({chunk.path!r} began)", "last")
                if chunk.offset != received:
                    raise CorruptedDownload(path, f"a chunk at offset {chunk.offset} after {received} bytes", "offset")
                f.write(chunk.data)
                digest.update(chunk.data)
                received += len(chunk.data)
                if on_chunk is not None:
                    on_chunk(chunk)
                if chunk.last:
                    break
                following = next(stream, None)
                if following is None:
                    raise CorruptedDownload(path, "the stream ended before the file's last chunk", "last")
                chunk = following
            verify_file(path, received, digest.hexdigest(), chunk)
        seen.add(path)
        written.append(target)
    return written
