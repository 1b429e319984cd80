"""The CPU provider's cache of optimised graphs: where a graph is loaded from, its checks, publishing and discarding.

A graph ONNX Runtime optimised on the first start is saved under the engine cache (:func:`vald.cache.cache_dir`)
in a folder named by the source graph's sha256, the onnxruntime version and this CPU's instruction-set flags;
its files are stamped when published and checked (stamps and content hash) before every later load.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

from vald.cache import StampStore, cache_dir
from vald.cpu import cpu_flags_line
from vald.errors import CacheWarning
from vald.manifest import Manifest, sha256_file

OPTIMIZED = "optimized.onnx"  # a cached optimised graph, inside a folder named by its key


@functools.cache
def cpu_flags_sha() -> str:
    """Hash of this CPU's instruction-set flags (an optimised graph may use kernels only they allow)."""
    flags = cpu_flags_line()
    if flags is None:  # pragma: no cover - not Linux
        flags = os.uname().machine
    return hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:16]


def cached_graph(manifest: Manifest, rel: str, digest: str) -> tuple[Path, str, tuple[Path, Path] | None]:
    """Where to load ``rel`` from.

    Returns (path, the cached optimised graph's sha256 or "" when it is the engine file itself, and the
    (staging file, final folder) pair to write and publish an optimised graph to, or None).  A cache that
    fails its check is removed here with one warning (see :mod:`vald.cache`).
    """
    import onnxruntime as ort

    key = hashlib.sha256(json.dumps([digest, ort.__version__, cpu_flags_sha()]).encode()).hexdigest()[:24]
    folder = cache_dir(manifest.root, "ort")
    source = manifest.root / rel
    if folder is None:
        return source, "", None
    final = folder / key
    members = [final / OPTIMIZED, final / f"{OPTIMIZED}.data"]
    if final.exists():
        stamps = StampStore(manifest.root)
        problem = _cache_problem(stamps, members)
        if problem is None:
            return members[0], _cache_digest(stamps, members), None
        discard_cache(manifest.root, final, rel, problem)
    for stale in folder.glob(f".{key}.*"):  # left by a process killed while writing (GBs each at SD size)
        if not _alive(stale.name.rsplit(".", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    staging = folder / f".{key}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return source, "", (staging / OPTIMIZED, final)


def _cache_problem(stamps: StampStore, members: list[Path]) -> str | None:
    """Why the cached graph's files cannot be trusted, or None: stamps match and the content hashes agree."""
    for member in members:
        rel = str(member.relative_to(stamps.root))
        if stamps.recorded_sha256(rel) is None:
            return f"{member.name} has no stamp (written by another vald version, or cut short)"
        if stamps.trusted_sha256(rel) is None:
            return f"{member.name} was changed after it was written (size, times or inode differ)"
        if not stamps.content_matches(rel):
            return f"{member.name} no longer has the sha256 recorded when it was written"
    return None


def _cache_digest(stamps: StampStore, members: list[Path]) -> str:
    """One sha256 over the cached graph's recorded file hashes (what result.json records)."""
    recorded = [stamps.recorded_sha256(str(m.relative_to(stamps.root))) or "" for m in members]
    return hashlib.sha256("".join(recorded).encode()).hexdigest()


def discard_cache(root: Path, final: Path, rel: str, problem: str) -> None:
    """Remove a cached graph that cannot be trusted, saying so once; it is rebuilt from the engine file."""
    warnings.warn(
        f"cached optimised graph {final.relative_to(root)} discarded: {problem}; rebuilding it from {rel}",
        CacheWarning,
        stacklevel=3,
    )
    stamps = StampStore(root)
    for member in (final / OPTIMIZED, final / f"{OPTIMIZED}.data"):
        stamps.forget(str(member.relative_to(root)))
    stamps.save()
    shutil.rmtree(final, ignore_errors=True)


def _alive(pid: str) -> bool:
    """Whether ``pid`` (text) names a running process."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def publish_graph(manifest: Manifest, staged: Path, final: Path) -> None:
    """Move a freshly written optimised graph's folder into place as ``final`` and stamp its files."""
    data = staged.with_name(f"{OPTIMIZED}.data")
    if not data.exists():
        data.write_bytes(b"")  # a graph small enough to keep its weights inline: same layout every time
    try:
        staged.parent.rename(final)
    except OSError:  # another process published it first
        shutil.rmtree(staged.parent, ignore_errors=True)
        return
    stamps = StampStore(manifest.root)
    for member in (final / OPTIMIZED, final / f"{OPTIMIZED}.data"):
        stamps.record(str(member.relative_to(manifest.root)), sha256_file(member))
    stamps.save()
