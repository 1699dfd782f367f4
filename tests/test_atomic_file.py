"""replace_file: the old content or the new, never a part; private files are never readable by others."""

import os
import stat

import pytest

from fedgrpo.atomic_file import atomic_writer, replace_file


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_private_and_public_files_get_their_modes_and_text_is_utf8(tmp_path):
    replace_file(tmp_path / "key", b"secret")
    replace_file(tmp_path / "cert", "café", private=False)
    assert mode(tmp_path / "key") == 0o600 and (tmp_path / "key").read_bytes() == b"secret"
    assert mode(tmp_path / "cert") == 0o644 and (tmp_path / "cert").read_text(encoding="utf-8") == "café"


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "dataset.jsonl"
    replace_file(path, "old\n")
    with pytest.raises(TypeError):
        replace_file(path, 42)  # type: ignore[arg-type]  (not bytes: fails mid-write)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["dataset.jsonl"]


def test_a_file_written_piece_by_piece_appears_whole_or_not_at_all(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"old")
    with atomic_writer(path, private=False) as f:
        f.write(b"new ")
        assert path.read_bytes() == b"old"  # not there until the block ends
        f.write(b"content")
    assert path.read_bytes() == b"new content" and mode(path) == 0o644
    with pytest.raises(ValueError), atomic_writer(path) as f:
        f.write(b"half")
        raise ValueError("checksum mismatch")  # e.g. a download that failed its check
    assert path.read_bytes() == b"new content" and sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]
