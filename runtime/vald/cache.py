"""The engine folder's cache: verification stamps and backend-optimised graphs, in ``<engines>/.vald-cache``.

Hashing a 3.5 GB engine set takes seconds to tens of seconds, on every start.  Instead, after a file
has been hashed and found to match the manifest, its stamp (size, mtime in ns, inode, device, sha256)
is kept; a later start that finds the same stamp trusts the recorded hash.  Any write through the file
system changes the mtime (and a replaced file its inode), so an edited, truncated or swapped engine
file is hashed again and refused if it no longer matches.  What a stamp does not catch is a change
made on purpose to keep size and mtime (e.g. ``touch -d`` after editing the bytes): ``vald verify``
re-hashes everything, ignoring stamps.

Derived files (ONNX Runtime's optimised graphs, OpenVINO's compiled blobs) live in the same folder,
keyed by what they derive from and by the runtime's version; they are stamped when written and
discarded when their stamp no longer matches; ``vald verify`` removes them (they are rebuilt from the
verified files on the next start).  A folder that cannot be written (read-only install)
means no cache: every start hashes and optimises again, and provenance says so.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from vald.outputs import write_atomic
from vald.strictjson import encode

CACHE_DIR = ".vald-cache"
STAMPS = "stamps.json"


@dataclass(frozen=True)
class FileStamp:
    """What identifies a file's content without reading it, plus the hash it had when stamped."""

    size: int
    mtime_ns: int
    inode: int
    device: int
    sha256: str

    @classmethod
    def of(cls, path: Path, sha256: str) -> FileStamp:
        """Stamp ``path`` (just hashed to ``sha256``)."""
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, sha256)

    def matches(self, path: Path) -> bool:
        """Whether ``path`` still has this size, mtime, inode and device."""
        try:
            st = path.stat()
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev) == (self.size, self.mtime_ns, self.inode, self.device)


class StampStore:
    """Stamps of files under ``root`` keyed by relative path; loaded once, saved atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / CACHE_DIR / STAMPS
        self._stamps: dict[str, FileStamp] = {}
        self._dirty = False
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            self._stamps = {rel: FileStamp(**value) for rel, value in raw.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            self._stamps = {}  # absent or unreadable: everything is hashed again

    def trusted_sha256(self, rel: str) -> str | None:
        """The recorded sha256 of ``rel`` if its stamp still matches the file, else None."""
        stamp = self._stamps.get(rel)
        return stamp.sha256 if stamp is not None and stamp.matches(self.root / rel) else None

    def record(self, rel: str, sha256: str) -> None:
        """Stamp ``rel`` as having ``sha256`` now."""
        self._stamps[rel] = FileStamp.of(self.root / rel, sha256)
        self._dirty = True

    def forget(self, rel: str) -> None:
        """Drop the stamp of ``rel``."""
        self._dirty |= self._stamps.pop(rel, None) is not None

    def save(self) -> bool:
        """Write the stamps if changed; False when the folder cannot be written (no cache, not an error)."""
        if not self._dirty:
            return True
        payload = {rel: asdict(stamp) for rel, stamp in sorted(self._stamps.items())}
        try:
            write_atomic(self.path, encode(payload, indent=1))
        except OSError:
            return False
        self._dirty = False
        return True


def cache_dir(root: Path, *parts: str) -> Path | None:
    """``root/.vald-cache/<parts>``, created; None when the engine folder cannot be written."""
    folder = root.joinpath(CACHE_DIR, *parts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


DERIVED = ("ort", "openvino")  # cache sub-folders made from the engine files, rebuilt on the next start


def clear_derived(root: Path) -> None:
    """Remove the optimised/compiled graphs derived from the engine files (``vald verify`` does)."""
    for name in DERIVED:
        shutil.rmtree(root / CACHE_DIR / name, ignore_errors=True)
