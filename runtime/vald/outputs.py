"""Writing results atomically: counterfactual PNG, signed map NPY, triptych PNG, previews, result.json."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vald.render import TITLES, heat_rgba, triptych

COUNTERFACTUAL = "counterfactual.png"
ATTRIBUTION = "attribution.npy"
TRIPTYCH = "triptych.png"
RESULT = "result.json"
INDUCED = "induced.png"
INPUT = "input.png"
HEATMAP = "heatmap.png"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over it (no half-written files)."""
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


def write_outputs(
    out_dir: Path,
    input01: NDArray[np.float32],
    counterfactual01: NDArray[np.float32],
    signed_map: NDArray[np.float32],
    vmax: float,
    result: Mapping[str, Any],
    *,
    image_name: str = COUNTERFACTUAL,
    titles: tuple[str, str, str] = TITLES,
    extra: Mapping[str, bytes] | None = None,
) -> dict[str, Path]:
    """Write the outputs (native resolution); ``result.json`` last, so its presence means complete.

    ``vmax`` is the colour limit shared by the heat map and the triptych.  ``image_name`` names the
    generated image's PNG (``induced.png`` for induction); ``titles`` label the triptych's panels;
    ``extra`` are further files (the derived DICOM objects).  ``input.png`` is the input as the model
    saw it (after the DICOM grey-level transforms) and ``heatmap.png`` the map alone as RGBA.
    """
    names = (image_name, ATTRIBUTION, TRIPTYCH, INPUT, HEATMAP, *(extra or {}), RESULT)
    paths = {name: out_dir / name for name in names}
    for name, data in (extra or {}).items():
        write_atomic(paths[name], data)
    write_atomic(paths[INPUT], png16(input01))
    write_atomic(paths[HEATMAP], png_rgba(heat_rgba(signed_map, vmax)))
    write_atomic(paths[image_name], png16(counterfactual01))
    buf = io.BytesIO()
    np.save(buf, signed_map.astype(np.float32), allow_pickle=False)
    write_atomic(paths[ATTRIBUTION], buf.getvalue())
    buf = io.BytesIO()
    triptych(input01, counterfactual01, signed_map, vmax, titles).save(buf, format="PNG")
    write_atomic(paths[TRIPTYCH], buf.getvalue())
    write_atomic(paths[RESULT], (json.dumps(result, indent=2, sort_keys=True) + "\n").encode())
    return paths
