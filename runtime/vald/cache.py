"""The engine folder's cache: verification stamps and backend-optimised graphs, in ``<engines>/.vald-cache``.

Hashing a 3.5 GB engine set takes seconds to tens of seconds, on every start.  Instead, after a file
has been hashed and found to match the manifest, its stamp (size, mtime and ctime in ns, inode, device,
sha256) is kept; a later start that finds the same stamp trusts the recorded hash.  Any write through the
file system changes the mtime and the ctime, and a replaced file its inode; restoring the mtime afterwards
(``touch -d``, ``utime``) sets the ctime to now, and the ctime cannot be set back short of changing the
system clock.  So an edited, truncated or swapped engine file is hashed again and refused if it no longer
matches.  ``vald verify`` re-hashes everything, ignoring stamps.

Derived files (ONNX Runtime's optimised graphs) live in the same folder, keyed by what they derive from
and by the runtime's version.  They are trusted no more than engine files, and more cheaply checked than
rebuilt: their sha256 is taken when they are written, and every start that loads them hashes them again
and compares *before* loading (about 1 s per GB here; the demo's in milliseconds).  A cached graph whose
stamp or content no longer matches, or that onnxruntime cannot load, is removed and rebuilt from the
verified engine file, with one warning naming the cache; the engine file is never blamed for it.  What
this cannot catch is someone who rewrites the bytes *and* the recorded hash in ``stamps.json``; whoever
can do that can also rewrite the manifest, so result.json records the cached graph's sha256 beside the
engine hashes.  ``vald verify`` reports every derived file it finds altered, then removes them all.
OpenVINO's compiled blobs (``CACHE_DIR``) are checked by OpenVINO itself.  A folder that cannot be
written (read-only install) means no cache: every start hashes and optimises again, and provenance says so.
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
    ctime_ns: int
    inode: int
    device: int
    sha256: str

    @classmethod
    def of(cls, path: Path, sha256: str) -> FileStamp:
        """Stamp ``path`` (just hashed to ``sha256``)."""
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, sha256)

    def matches(self, path: Path) -> bool:
        """Whether ``path`` still has this size, mtime, ctime, inode and device."""
        try:
            st = path.stat()
        except OSError:
            return False
        now = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
        return now == (self.size, self.mtime_ns, self.ctime_ns, self.inode, self.device)


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

    def recorded_sha256(self, rel: str) -> str | None:
        """The sha256 recorded for ``rel`` when it was stamped, whether or not the file still matches."""
        stamp = self._stamps.get(rel)
        return stamp.sha256 if stamp is not None else None

    def content_matches(self, rel: str) -> bool:
        """Whether ``rel`` exists and its bytes hash to the sha256 recorded when it was stamped (reads the file)."""
        from vald.manifest import sha256_file

        recorded, path = self.recorded_sha256(rel), self.root / rel
        return recorded is not None and path.is_file() and sha256_file(path) == recorded

    def derived(self) -> list[str]:
        """The stamped files under the derived-graph folders (relative paths)."""
        prefixes = tuple(f"{CACHE_DIR}/{name}/" for name in DERIVED)
        return sorted(rel for rel in self._stamps if rel.startswith(prefixes))

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


def altered_derived(root: Path) -> list[str]:
    """Derived files whose content no longer has the sha256 recorded when they were written (or are gone)."""
    stamps = StampStore(root)
    return [rel for rel in stamps.derived() if not stamps.content_matches(rel)]


def clear_derived(root: Path) -> list[str]:
    """Remove the optimised/compiled graphs derived from the engine files (``vald verify`` does).

    Returns the derived files found altered first (see :func:`altered_derived`).
    """
    altered = altered_derived(root)
    stamps = StampStore(root)
    for rel in stamps.derived():
        stamps.forget(rel)
    stamps.save()
    for name in DERIVED:
        shutil.rmtree(root / CACHE_DIR / name, ignore_errors=True)
    return altered
