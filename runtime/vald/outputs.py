"""Writing results so that nothing is torn or stale: atomic files, and per-input output sets.

An input's output folder is published as a whole (:func:`publish_set`): its ``result.json`` lists every
file of the set with its sha256, and the folder holds nothing else.  :func:`described` is the test a
re-run uses before it skips an input.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vald.errors import OutputError, os_cause
from vald.render import TITLES, heat_rgba, triptych
from vald.strictjson import encode

COUNTERFACTUAL = "counterfactual.png"
ATTRIBUTION = "attribution.npy"
TRIPTYCH = "triptych.png"
RESULT = "result.json"
INDUCED = "induced.png"
INPUT = "input.png"
HEATMAP = "heatmap.png"
UNCERTAINTY = "uncertainty.npy"  # per-pixel std of the per-seed maps (--average > 1)
UNCERTAINTY_PNG = "uncertainty.png"  # the same, grey, white at the map's colour limit


STAGING, REPLACED = ".partial-", ".replaced-"  # name parts of a set being written and of the set it replaces


@contextmanager
def output_errors(what: str) -> Iterator[None]:
    """Turn a failed write of ``what`` into a one-line :class:`OutputError` naming the cause."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write {what}: {os_cause(exc, 'output device')}") from None


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it, rename it over ``path``, flush the folder.

    A reader sees the old file or the new one, never a torn one, also after a power loss.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc < 2.28, musl
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a file system without exchange
        return False
    raise OSError(err, os.strerror(err))


def publish_set(out_dir: Path, files: Mapping[str, bytes], result: Mapping[str, Any]) -> dict[str, Path]:
    """Make ``out_dir`` hold exactly ``files`` plus a ``result.json`` that lists them with their sha256.

    The set is written into a fresh staging folder beside ``out_dir`` and flushed (files and folder),
    then swapped in for the old folder in one step, so ``out_dir`` is always either the old complete set
    or the new one: never new pixels under an old ``result.json``, never a file of an older run (a
    segmentation from other settings) beside the new ones.  Where the file system cannot swap, the old
    folder is renamed away first: a kill between the two renames leaves no folder (the input is redone).
    Staging and replaced folders a kill leaves behind are removed by :func:`remove_leftovers`.
    """
    if RESULT in files:
        raise ValueError(f"{RESULT} is written by publish_set itself")
    with output_errors("the outputs"):
        return _publish(out_dir, files, result)


def _publish(out_dir: Path, files: Mapping[str, bytes], result: Mapping[str, Any]) -> dict[str, Path]:
    parent, name = out_dir.parent, out_dir.name
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{name}{STAGING}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        listed = {}
        for file_name, data in files.items():
            _write_flushed(staging / file_name, data)
            listed[file_name] = hashlib.sha256(data).hexdigest()
        body = {**result, "files": dict(sorted(listed.items()))}
        _write_flushed(staging / RESULT, encode(body, indent=2, sort_keys=True))
        fsync_dir(staging)
        if out_dir.exists() and _exchange(staging, out_dir):
            old = staging  # after the swap, the staging name holds the old set
        else:
            old = parent / f".{name}{REPLACED}{os.getpid()}"
            if out_dir.exists():
                os.replace(out_dir, old)
            os.replace(staging, out_dir)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return {file_name: out_dir / file_name for file_name in (*files, RESULT)}


def _write_flushed(path: Path, data: bytes) -> None:
    with path.open("xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def remove_leftovers(out_root: Path) -> int:
    """Remove what killed writers left in ``out_root``: temporary files, staging and replaced folders.

    Call it only while holding the output folder's lock (:mod:`vald.lock`): another live writer's
    staging folder would look the same.  Returns how many were removed.
    """
    if not out_root.is_dir():
        return 0
    removed = 0
    for path in out_root.iterdir():
        n = path.name
        if n.startswith(".") and (n.endswith(".tmp") or STAGING in n or REPLACED in n):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    for folder in (p for p in out_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in folder.glob(".*.tmp"):  # written by vald before output sets were staged
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def described(out_dir: Path) -> dict[str, Any] | None:
    """``out_dir``'s result.json when the folder holds exactly the files it lists, with those hashes; else None."""
    try:
        result = json.loads((out_dir / RESULT).read_text(encoding="utf-8"))
        listed = result["files"]
        present = {p.name for p in out_dir.iterdir()} - {RESULT}
        if not isinstance(listed, dict) or present != set(listed):
            return None
        for file_name, digest in listed.items():
            if hashlib.sha256((out_dir / file_name).read_bytes()).hexdigest() != digest:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return result if isinstance(result, dict) else None


def png16(image01: NDArray[np.float32]) -> bytes:
    """A 16-bit greyscale PNG of an image in [0, 1]."""
    buf = io.BytesIO()
    Image.fromarray((np.clip(image01, 0, 1) * 65535 + 0.5).astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def png_rgba(rgba: NDArray[np.uint8]) -> bytes:
    """An RGBA PNG."""
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class OutputSet:
    """One input's outputs, computed but not yet written.

    Its folder's name under the output root, its files (name -> bytes, as :func:`output_files` makes them)
    and its result (written as ``result.json``).  It is what a worker returns, in this process or on a
    cluster node: only the caller that holds the output folder's lock publishes it (:meth:`publish`).
    """

    key: str
    files: Mapping[str, bytes]
    result: Mapping[str, Any]

    def publish(self, out_root: Path) -> Path:
        """Write the set as ``out_root/<key>/`` with :func:`publish_set`; the folder."""
        publish_set(out_root / self.key, self.files, self.result)
        return out_root / self.key


def output_files(
    input01: NDArray[np.float32],
    counterfactual01: NDArray[np.float32],
    signed_map: NDArray[np.float32],
    vmax: float,
    result: Mapping[str, Any],
    *,
    image_name: str = COUNTERFACTUAL,
    titles: tuple[str, str, str] = TITLES,
    extra: Mapping[str, bytes] | None = None,
    uncertainty: NDArray[np.float32] | None = None,
) -> tuple[dict[str, bytes], Mapping[str, Any]]:
    """One input's output set (native resolution) as file name -> bytes, and its result, ready to publish.

    ``vmax`` is the colour limit shared by the heat map and the triptych.  ``image_name`` names the
    generated image's PNG (``induced.png`` for induction); ``titles`` label the triptych's panels;
    ``extra`` are further files (the derived DICOM objects).  ``input.png`` is the input as the model
    saw it (after the DICOM grey-level transforms) and ``heatmap.png`` the map alone as RGBA.
    ``uncertainty`` (the per-seed maps' std) adds ``uncertainty.npy`` and ``uncertainty.png``.
    """
    npy = io.BytesIO()
    np.save(npy, signed_map.astype(np.float32), allow_pickle=False)
    trip = io.BytesIO()
    triptych(input01, counterfactual01, signed_map, vmax, titles).save(trip, format="PNG")
    files = {
        image_name: png16(counterfactual01),
        ATTRIBUTION: npy.getvalue(),
        TRIPTYCH: trip.getvalue(),
        INPUT: png16(input01),
        HEATMAP: png_rgba(heat_rgba(signed_map, vmax)),
        **(extra or {}),
    }
    if uncertainty is not None:
        std = io.BytesIO()
        np.save(std, uncertainty.astype(np.float32), allow_pickle=False)
        files[UNCERTAINTY] = std.getvalue()
        files[UNCERTAINTY_PNG] = png16(np.clip(uncertainty / max(vmax, 1e-12), 0.0, 1.0).astype(np.float32))
    return files, result
