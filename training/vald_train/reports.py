"""Short radiology-style report lines for the phantoms, and the vocabulary they use.

The reports are the text prompts the model is trained on.  The runtime's default
target prompt (:data:`vald.config.DEFAULT_PROMPT`) is the most common normal report.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from vald.config import DEFAULT_PROMPT

if TYPE_CHECKING:
    from vald_train.phantoms import FindingSpec

NORMAL_REPORTS = (DEFAULT_PROMPT, DEFAULT_PROMPT, DEFAULT_PROMPT, "no acute cardiopulmonary abnormality", "clear lungs")

TEMPLATES = {
    "consolidation": (
        "{side} {zone} zone consolidation",
        "consolidation in the {side} {zone} zone",
        "{size} focal opacity in the {side} {zone} zone",
    ),
    "nodule": ("{size} {side} {zone} zone nodule", "nodule in the {side} {zone} zone"),
    "effusion": (
        "{size} {side} pleural effusion",
        "{side} pleural effusion with blunting of the costophrenic angle",
    ),
    "cardiomegaly": ("cardiomegaly", "enlarged heart, cardiomegaly", "{grade} cardiomegaly"),
}


def report_for(spec: FindingSpec, rng: np.random.Generator) -> str:
    """One report line describing ``spec`` (a normal report for a normal case)."""
    if spec.kind.value == "normal":
        return str(rng.choice(NORMAL_REPORTS))
    template = str(rng.choice(TEMPLATES[spec.kind.value]))
    grade = "mild" if spec.size == "small" else "marked"
    return template.format(side=spec.side, zone=spec.zone, size=spec.size, grade=grade)


def vocabulary() -> tuple[str, ...]:
    """Every word the reports (and the default prompts) can contain, sorted."""
    texts = [*NORMAL_REPORTS, *(t for group in TEMPLATES.values() for t in group)]
    fills = ["right", "left", "upper", "middle", "lower", "small", "large", "mild", "marked"]
    words = {w for text in texts for w in re.findall(r"[a-z]+", text.replace("{", " ").replace("}", " "))}
    words -= {"side", "zone", "size", "grade"}
    return tuple(sorted(words | set(fills) | {"zone"}))
