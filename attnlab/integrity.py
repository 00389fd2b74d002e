"""Checksums for the files attnlab writes, checked before anything is read from them.

Crashes, full disks and hand-edits damage files in ways that still parse: a CSV cut
mid-row, a JSON value changed, a torch file with garbled bytes (``torch.load`` does not
check the CRC-32 each member of its zip archive carries). So:

- a run folder keeps a manifest, ``digests.json``, with the SHA-256 and size of every
  file the run store wrote (:class:`Manifest`); a file that does not match is damaged;
- torch files are also checked member by member against their own CRC-32s
  (:func:`verify_torch_file`), which needs no manifest (checkpoints are checked this way).

A damaged file raises :class:`DamagedFileError`, naming the file and what is wrong; the
caller says what happens next (set aside and retrained, rebuilt, ...).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Iterator, Optional

from .paths import atomic_path

MANIFEST = "digests.json"
MANIFEST_FORMAT = 1


class DamagedFileError(ValueError):
    """A file whose content does not match its checksum, or that cannot be parsed."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{self.path} is damaged ({reason})")


def file_digest(path: str | Path) -> str:
    """SHA-256 of the whole file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_torch_file(path: str | Path) -> None:
    """Check every member of a ``torch.save`` archive against its CRC-32.

    Raises :class:`DamagedFileError` for a truncated file, garbled headers or data, and
    FileNotFoundError for a missing one.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, RuntimeError) as exc:
        # RuntimeError: zipfile's own "decompression" errors on garbled headers
        raise DamagedFileError(path, f"not a readable torch archive: {type(exc).__name__}: {exc}") from None
    if bad is not None:
        raise DamagedFileError(path, f"CRC-32 mismatch in archive member {bad!r}")


class Manifest:
    """The digests of the files in one folder, in ``<folder>/digests.json``.

    :meth:`write` replaces a file atomically and records its digest crash-safely: the new
    digest is recorded beside the old one before the file is replaced, and alone after,
    so whatever moment a crash hits, the file on disk matches an accepted digest.
    Only one process may write a folder at a time (the run store holds a lock).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST

    def entries(self) -> Optional[dict]:
        """The recorded digests, or None when the folder has no manifest (written before
        manifests existed). A damaged manifest raises :class:`DamagedFileError`."""
        try:
            blob = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as exc:
            raise DamagedFileError(self.path, f"not valid JSON: {exc}") from None
        files = blob.get("files") if isinstance(blob, dict) else None
        if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
            raise DamagedFileError(self.path, "not a manifest of file digests")
        return files

    def _entries_or_empty(self) -> dict:
        try:
            return self.entries() or {}
        except DamagedFileError:
            return {}  # a fresh manifest replaces the damaged one from the next write on

    def _save(self, files: dict) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1, sort_keys=True))

    @contextlib.contextmanager
    def write(self, name: str) -> Iterator[Path]:
        """A temporary path to write ``name`` to; on success it replaces ``name`` and its
        digest is recorded."""
        path = self.folder / name
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # the name atomic_path uses
        try:
            yield tmp
            entry = {"sha256": file_digest(tmp), "bytes": tmp.stat().st_size}
            files = self._entries_or_empty()
            old = files.get(name) or {}
            if old.get("sha256") != entry["sha256"]:  # phase 1: the old content or the new one
                self._save({**files, name: {**entry, "or": old.get("sha256")}})
            os.replace(tmp, path)
            self._save({**files, name: entry})
        finally:
            tmp.unlink(missing_ok=True)

    def forget(self, name: str) -> None:
        files = self._entries_or_empty()
        if name in files:
            del files[name]
            self._save(files)

    def check(self, name: str, entries: Optional[dict]) -> None:
        """Raise :class:`DamagedFileError` when ``name`` does not match its recorded digest
        (``entries`` from :meth:`entries`; None checks nothing) and FileNotFoundError when
        it is missing."""
        path = self.folder / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing")
        if entries is None:
            return
        entry = entries.get(name)
        if entry is None:
            raise DamagedFileError(path, f"no digest recorded in {MANIFEST}")
        size = path.stat().st_size
        if size != entry.get("bytes") and not entry.get("or"):
            raise DamagedFileError(path, f"{size} bytes where {entry.get('bytes')} were written: "
                                         "cut short or edited")
        if file_digest(path) not in (entry.get("sha256"), entry.get("or")):
            raise DamagedFileError(path, "its SHA-256 differs from the one recorded when it was written")
