"""Strict JSON in, strict JSON out: NaN and infinities are not JSON.

Python's ``json`` writes ``NaN`` and ``-Infinity`` by default, which other readers (browsers, jq, most
JSON libraries) reject.  vald writes with ``allow_nan=False`` everywhere.  Where a source legitimately
holds a non-finite number (diffusers writes DPM-Solver's ``lambda_min_clipped = -inf`` into
``scheduler_config.json``), it is kept as the text ``"-Infinity"`` / ``"Infinity"`` / ``"NaN"`` and
:func:`restore_non_finite` turns it back into a float on reading.
"""

from __future__ import annotations

import json
import math
from typing import Any

_TEXT = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def non_finite_as_text(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its JSON-ish name as a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: non_finite_as_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [non_finite_as_text(v) for v in value]
    return value


def restore_non_finite(value: Any) -> Any:
    """The inverse of :func:`non_finite_as_text` (also accepts bare non-finite numbers older files hold)."""
    if isinstance(value, str) and value in _TEXT:
        return _TEXT[value]
    if isinstance(value, dict):
        return {k: restore_non_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [restore_non_finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``value``, non-finite floats kept as text."""
    return json.dumps(non_finite_as_text(value), allow_nan=False, **kwargs)


def encode(value: Any, **kwargs: Any) -> bytes:
    """Strict JSON of ``value`` as UTF-8 bytes with a final newline; ValueError on NaN or infinity.

    For what vald computes itself (results, summaries, stamps): a non-finite number there is a bug to
    stop at, not a value to keep.
    """
    return (json.dumps(value, allow_nan=False, **kwargs) + "\n").encode("utf-8")
