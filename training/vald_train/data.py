"""Training and evaluation sets built from phantom seeds.

Training uses seeds ``[0, n)``; evaluation uses seeds from :data:`HELD_OUT_START`
on, which training never touches.  Each abnormal training case contributes its
image with its report *and* its normal twin with a normal report, so the model
sees both sides of every pair.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from vald_train.phantoms import Finding, make_phantom
from vald_train.reports import NORMAL_REPORTS

HELD_OUT_START = 1_000_000


@dataclass(frozen=True)
class TrainingSet:
    """Images ``[N, S, S]`` uint16 (0..65535 = 0..1) and one report per image."""

    images: NDArray[np.uint16]
    prompts: tuple[str, ...]
    findings: tuple[str, ...]

    def save(self, path: Path) -> None:
        """Write one ``.npz`` (images, prompts, findings)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, images=self.images, prompts=np.array(self.prompts), findings=np.array(self.findings))

    @classmethod
    def load(cls, path: Path) -> TrainingSet:
        """Read what :meth:`save` wrote."""
        with np.load(path) as z:
            return cls(z["images"], tuple(str(p) for p in z["prompts"]), tuple(str(f) for f in z["findings"]))


def _case(args: tuple[int, int]) -> list[tuple[NDArray[np.uint16], str, str]]:
    seed, size = args
    p = make_phantom(seed, size)
    rows = [(_to_u16(p.abnormal), p.report, p.finding.kind.value)]
    if p.finding.kind is not Finding.NORMAL:
        normal = NORMAL_REPORTS[np.random.default_rng([seed, 3]).integers(len(NORMAL_REPORTS))]
        rows.append((_to_u16(p.twin), normal, Finding.NORMAL.value))
    return rows


def _to_u16(image: NDArray[np.float32]) -> NDArray[np.uint16]:
    return np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)


def build_training_set(n_seeds: int, size: int, workers: int = 2) -> TrainingSet:
    """Render seeds ``[0, n_seeds)`` (abnormal images and their twins) in ``workers`` processes."""
    with ProcessPoolExecutor(workers) as pool:
        cases = list(pool.map(_case, [(s, size) for s in range(n_seeds)], chunksize=64))
    rows = [row for case in cases for row in case]
    images = np.stack([r[0] for r in rows])
    return TrainingSet(images, tuple(r[1] for r in rows), tuple(r[2] for r in rows))


def held_out_seeds(count: int, kind: Finding, offset: int = 0) -> list[int]:
    """``count`` evaluation seeds for one finding type, disjoint across types and from training."""
    start = HELD_OUT_START + 100_000 * list(Finding).index(kind) + offset
    return list(range(start, start + count))
