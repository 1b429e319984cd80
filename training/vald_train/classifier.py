"""The phantom classifier that ``vald eval``'s counterfactual check uses out of the box.

    python -m vald_train.classifier --out engines/classifier [--steps 1200]

A small CNN over the five phantom classes (Normal and the four findings), trained on the training seeds
(the abnormal images and their normal twins, as the demo model sees them) and scored on held-out
phantoms.  It is written as ONNX following the input convention of :mod:`vald.eval.classifier` (input
``image`` ``[N, 1, 64, 64]`` in [0, 1], output ``logits`` ``[N, 5]``, class names in the metadata) with a
``card.json`` beside it: classes, convention, held-out accuracy per class, the recipe and the file's sha256.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vald_train.data import TrainingSet, build_training_set, held_out_seeds
from vald_train.dataset import CLASS_NAMES
from vald_train.phantoms import Finding, make_phantom

CLASSES = [CLASS_NAMES[f] for f in Finding]  # Normal first
SIZE = 64  # the images are letterboxed to 64² (bilinear): enough for the findings, cheap to train
LR = 1e-3


def make_network() -> Any:
    """A strided stem, four scales of two 3x3 convolutions (the second strided), average pooling, a linear layer."""
    import torch

    layers: list[Any] = [torch.nn.Conv2d(1, 24, 3, stride=1, padding=1), torch.nn.BatchNorm2d(24), torch.nn.ReLU()]
    cin = 24
    for cout in (32, 64, 96, 128):
        for stride in (1, 2):
            layers += [torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=1), torch.nn.BatchNorm2d(cout)]
            layers += [torch.nn.ReLU()]
            cin = cout
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(cin, len(CLASSES))]
    return torch.nn.Sequential(*layers)


def _model_size(images: Any) -> Any:
    """uint16 images -> float32 ``[N, 1, SIZE, SIZE]`` in [0, 1], resized as vald resizes (bilinear)."""
    from vald.imageio import Letterbox

    box = Letterbox.fit(images.shape[1:], SIZE)
    return np.stack([box.to_model(im.astype(np.float32) / 65535.0) for im in images])[:, None]


def train(data: TrainingSet, steps: int, seed: int = 0, batch: int = 64, log: Any = print) -> Any:
    """Adam on class-balanced batches with light augmentation (left-right flips: the labels name no side)."""
    import torch

    torch.manual_seed(seed)
    net = make_network().train()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    labels = np.array([[f.value for f in Finding].index(name) for name in data.findings])
    images = _model_size(data.images)
    by_class = [np.flatnonzero(labels == k) for k in range(len(CLASSES))]
    for step in range(steps):
        rng = np.random.default_rng([seed, 5, step])
        index = np.array([rng.choice(by_class[k]) for k in rng.integers(len(CLASSES), size=batch)])
        x = torch.from_numpy(images[index])
        flip = torch.from_numpy(rng.random(batch) < 0.5)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        x = x * torch.from_numpy(rng.uniform(0.9, 1.1, (batch, 1, 1, 1)).astype(np.float32))
        for group in opt.param_groups:
            group["lr"] = LR * 0.5 * (1 + np.cos(np.pi * step / steps))
        loss = torch.nn.functional.cross_entropy(net(x), torch.from_numpy(labels[index]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"classifier step {step}/{steps} loss {loss.item():.4f}")
    return net.eval()


def held_out_accuracy(net: Any, per_type: int = 40) -> dict[str, float]:
    """Accuracy per class on held-out phantoms (seeds never used in training)."""
    import torch

    out = {}
    with torch.no_grad():
        for kind in Finding:
            images = [make_phantom(s, 128, kind).abnormal for s in held_out_seeds(per_type, kind, offset=500)]
            logits = net(torch.from_numpy(_model_size(np.round(np.stack(images) * 65535).astype(np.uint16))))
            out[CLASS_NAMES[kind]] = float((logits.argmax(1) == list(Finding).index(kind)).float().mean())
    return out


def export(net: Any, path: Path) -> None:
    """ONNX with the class names in the metadata (``vald.eval.classifier``'s convention)."""
    import onnx
    import torch

    torch.onnx.export(
        net,
        (torch.zeros(1, 1, SIZE, SIZE),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "classes", json.dumps(CLASSES)
    onnx.save(model, str(path))


def main(argv: list[str] | None = None) -> int:
    """Train, score, export and describe (see the module docstring)."""
    import torch

    from vald.manifest import sha256_file

    parser = argparse.ArgumentParser(prog="python -m vald_train.classifier", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="training set .npz written by the demo recipe (else rendered)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = TrainingSet.load(args.data) if args.data else build_training_set(3000, 128)
    net = train(data, args.steps)
    accuracy = held_out_accuracy(net)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "phantom_classifier.onnx"
    export(net, path)
    card = {
        "file": path.name,
        "sha256": sha256_file(path),
        "classes": CLASSES,
        "input": {"name": "image", "shape": ["N", 1, SIZE, SIZE], "range": "[0, 1], bright = dense (MONOCHROME2)"},
        "output": {"name": "logits", "shape": ["N", len(CLASSES)]},
        "held_out_accuracy": accuracy,
        "recipe": {
            "steps": args.steps,
            "batch": 64,
            "lr": LR,
            "class_balanced": True,
            "training_seeds": "0..2999 (abnormal + twins)",
        },
        "train_seconds": round(time.perf_counter() - started, 1),
        "caution": "trained on synthetic phantoms only; not for diagnostic use",
    }
    (args.out / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(accuracy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
