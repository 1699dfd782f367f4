"""Writing a file so that readers see the old content or the new, never a part.

``replace_file(path, data, private=True)`` writes ``data`` (bytes, or text as
UTF-8) to a temporary file in ``path``'s folder, flushes it to disk and
renames it over ``path``. The temporary file is created mode 0600 from the
start, so a private file (a key, a token, an organisation's dataset) is never
readable by others, even for a moment; ``private=False`` makes it 0644 before
it appears. On any error the temporary file is removed and ``path`` is left
as it was.

``atomic_writer(path, private=True)`` is the same for content written piece
by piece (a download too large to hold in memory): a context manager that
yields the temporary file open for binary writing and renames it over
``path`` only when the block ends without an exception; an exception (a
checksum that does not match, say) removes it and leaves ``path`` as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["replace_file", "atomic_writer"]


@contextmanager
def atomic_writer(path: Path, private: bool = True) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary file renamed over it at the end (see the module docstring)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if not private:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def replace_file(path: Path, data: bytes | str, private: bool = True) -> None:
    """Atomically replace ``path`` with ``data`` (see the module docstring)."""
    with atomic_writer(path, private) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
