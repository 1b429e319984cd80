"""An evaluation set in the COVID-19 Radiography Database layout.

``DATASET/<Class>/images/*`` (PNG, JPEG or TIFF), optionally ``DATASET/<Class>/masks/<same name>``
(lesion masks, white = lesion) and ``DATASET/<Class>/twins/<same name>`` (the image's true normal
counterpart, where one exists: phantoms).  The class named ``Normal`` (any case) is the reference set;
every other class is abnormal.  ``python -m vald_train.dataset OUT`` writes such a folder from phantoms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vald.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class Case:
    """One image of a class, with its mask and twin where the set has them."""

    label: str
    image: Path
    mask: Path | None = None
    twin: Path | None = None


@dataclass(frozen=True)
class EvalSet:
    """The abnormal cases and the real normal images."""

    abnormal: tuple[Case, ...]
    normal: tuple[Case, ...]

    @property
    def classes(self) -> list[str]:
        """Abnormal class names, in order."""
        return list(dict.fromkeys(c.label for c in self.abnormal))


def _beside(image: Path, kind: str) -> Path | None:
    path = image.parent.parent / kind / image.name
    return path if path.is_file() else None


def read_eval_set(root: Path, per_class: int | None = None) -> EvalSet:
    """The cases under ``root`` (the first ``per_class`` of each class by name, if given)."""
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist")
    abnormal: list[Case] = []
    normal: list[Case] = []
    for folder in sorted(p for p in root.iterdir() if (p / "images").is_dir()):
        images = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        cases = [Case(folder.name, p, _beside(p, "masks"), _beside(p, "twins")) for p in images[:per_class]]
        (normal if folder.name.lower() == "normal" else abnormal).extend(cases)
    if not normal:
        raise InputError(f"dataset {root} has no Normal/images folder (the reference class)")
    if not abnormal:
        raise InputError(f"dataset {root} has no abnormal class (<Class>/images besides Normal)")
    return EvalSet(tuple(abnormal), tuple(normal))
