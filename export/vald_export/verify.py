"""Each exported graph against its PyTorch module on random inputs, before export declares success."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vald.config import Precision
from vald.errors import ParityError
from vald.sessions.ort import OrtSession
from vald.spec import ComponentSpec

# Max |onnx - torch| relative to max(1, max|torch|), per precision (CPU onnxruntime).
TOLERANCE = {Precision.FP32: 1e-4, Precision.FP16: 5e-2}


@dataclass(frozen=True)
class ParityReport:
    """Measured agreement of one graph."""

    max_abs_error: float
    scale: float
    tolerance: float

    @property
    def relative_error(self) -> float:
        """Max abs error over the reference's scale."""
        return self.max_abs_error / self.scale


def check_graph(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    spec: ComponentSpec,
    graph: Path,
    precision: Precision,
) -> ParityReport:
    """Run both on ``inputs``; ParityError with the measured error if beyond tolerance."""
    with torch.inference_mode():
        reference = module(*inputs).float().numpy()
    session = OrtSession(graph, spec, ["CPUExecutionProvider"])
    got = session.run({t.name: x.numpy() for t, x in zip(spec.inputs, inputs, strict=True)})[spec.outputs[0].name]
    if got.shape != reference.shape:
        raise ParityError(f"{spec.component} {precision}: output shape {got.shape} != torch {reference.shape}")
    scale = max(1.0, float(np.abs(reference).max()))
    report = ParityReport(float(np.abs(got - reference).max()), scale, TOLERANCE[precision])
    if not np.isfinite(got).all() or report.relative_error > report.tolerance:
        raise ParityError(
            f"{spec.component} {precision} disagrees with PyTorch: max abs error {report.max_abs_error:.3g} "
            f"(scale {scale:.3g}, relative {report.relative_error:.3g} > tolerance {report.tolerance:g})"
        )
    return report
