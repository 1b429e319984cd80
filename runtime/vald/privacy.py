"""Keep vald's libraries from phoning home: their documented off switches, applied on ``import vald``.

- ONNX Runtime >= 1.29 (official Linux and macOS wheels, onnxruntime-gpu included) starts 1DS telemetry
  when its environment is created: a device id and an event database under
  ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/``, then DNS and HTTPS to Microsoft in runs over
  ~9 s.  Its documented runtime switch is ``ORT_DISABLE_TELEMETRY=1`` "before ONNX Runtime
  initializes" (onnxruntime's Privacy.md); ``disable_telemetry_events()`` only stops non-essential
  events after initialisation.  Older versions have no Linux telemetry and ignore the variable.
- OpenVINO's ``openvino_telemetry`` (opt-out Google Analytics, started by ``import openvino``) is made
  unimportable; OpenVINO then uses its own no-op stand-in.

vald imports neither library before this runs.  ONNX Runtime reads its switch when it is imported: a
program that imports onnxruntime before vald must set ``ORT_DISABLE_TELEMETRY=1`` itself (vald warns).
"""

from __future__ import annotations

import os
import sys
import warnings

ORT_SWITCH = "ORT_DISABLE_TELEMETRY"


def quiet_dependencies() -> None:
    """Turn the libraries' telemetry off for this process and its children (idempotent)."""
    if "onnxruntime" in sys.modules and os.environ.get(ORT_SWITCH) != "1":
        warnings.warn(
            f"onnxruntime was imported before vald with its telemetry on; set {ORT_SWITCH}=1 before importing it",
            RuntimeWarning,
            stacklevel=2,
        )
    os.environ[ORT_SWITCH] = "1"
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
