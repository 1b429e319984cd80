"""A radiograph classifier given as an ONNX file, for the counterfactual check of ``vald eval``.

Input convention (checked when the file is opened, each a one-line error):

- one input, float32 ``[N, 1, S, S]`` with a fixed ``S``: the grey image in [0, 1], bright = dense
  (MONOCHROME2), letterboxed to ``S`` exactly as vald feeds its own model;
- one output ``[N, K]``: logits (softmax is applied here);
- the class names in the model's metadata, key ``classes``, a JSON list of ``K`` names, one of them
  ``Normal`` (any case).

``engines/classifier/phantom_classifier.onnx`` follows it (trained by ``python -m vald_train.classifier``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from vald.errors import InputError
from vald.imageio import Letterbox

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class Prediction:
    """Class probabilities of one image."""

    probabilities: dict[str, float]

    @property
    def label(self) -> str:
        """The most probable class."""
        return max(self.probabilities, key=lambda k: self.probabilities[k])


class Classifier:
    """An ONNX classifier on ONNX Runtime's CPU provider."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise InputError(f"classifier file {path} does not exist")
        try:
            self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types
            raise InputError(f"classifier {path.name} cannot be loaded by onnxruntime ({type(exc).__name__})") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(f"classifier {path.name} must have one input and one output")
        shape = inputs[0].shape
        if len(shape) != 4 or shape[1] != 1 or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise InputError(f"classifier {path.name} input must be [N, 1, S, S] with a fixed S; it is {shape}")
        self.size, self._input = int(shape[2]), inputs[0].name
        meta = self._session.get_modelmeta().custom_metadata_map
        try:
            classes = json.loads(meta["classes"])
        except (KeyError, ValueError):
            raise InputError(f"classifier {path.name} has no 'classes' metadata (a JSON list of names)") from None
        if not isinstance(classes, list) or "normal" not in [str(c).lower() for c in classes]:
            raise InputError(f"classifier {path.name}: its classes must be a list that includes 'Normal'")
        self.classes = [str(c) for c in classes]
        self.normal = next(c for c in self.classes if c.lower() == "normal")

    def predict(self, images01: list[F32]) -> list[Prediction]:
        """Class probabilities of grey images ``[H, W]`` in [0, 1] (any size: letterboxed to the input)."""
        if not images01:
            return []
        batch = np.stack([Letterbox.fit(im.shape, self.size).to_model(im) for im in images01])[:, None]
        (logits,) = self._session.run(None, {self._input: batch.astype(np.float32)})
        logits = np.asarray(logits, dtype=np.float64)
        if logits.shape != (len(images01), len(self.classes)):
            raise InputError(f"classifier output is {list(logits.shape)}, expected [N, {len(self.classes)}]")
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        return [Prediction(dict(zip(self.classes, map(float, row), strict=True))) for row in p]

    def abnormal_probability(self, prediction: Prediction, dataset_class: str) -> float:
        """Probability of the image's own class where the classifier knows it, else of 'not normal'."""
        for name, value in prediction.probabilities.items():
            if name.lower() == dataset_class.lower():
                return value
        return 1.0 - prediction.probabilities[self.normal]
