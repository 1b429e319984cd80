"""`vald eval`: FID against independent computations, the FID network's plumbing, the classifier convention,
and the command end to end on a small phantom set with the shipped phantom classifier."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vald.errors import InputError
from vald.eval.fid import feature_statistics, fid, frechet_distance

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo"
CLASSIFIER = ROOT / "engines" / "classifier" / "phantom_classifier.onnx"


def _reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID through the eigenvalues of S1 S2 (real and non-negative for two covariance matrices)."""
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(s1 @ s2)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum())


def test_fid_matches_a_closed_form_and_an_eigenvalue_computation() -> None:
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations
    mu1, var1, mu2, var2 = np.array([1.0]), np.array([[4.0]]), np.array([-0.5]), np.array([[0.25]])
    assert frechet_distance(mu1, var1, mu2, var2) == pytest.approx(1.5**2 + (2.0 - 0.5) ** 2, abs=1e-12)
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(8, 8))
    a = rng.normal(size=(400, 8)) @ mix
    b = rng.normal(0.3, 1.2, size=(300, 8)) @ mix.T
    assert fid(a, b) == pytest.approx(_reference_fid(a, b), rel=1e-8)
    assert fid(a, b) == pytest.approx(frechet_distance(*feature_statistics(a), *feature_statistics(b)), rel=1e-8)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-8)
    few = rng.normal(size=(5, 64))  # fewer samples than dimensions: singular covariances, as with small sets
    more = rng.normal(0.2, 1.0, size=(7, 64))
    assert fid(few, more) == pytest.approx(_reference_fid(few, more), rel=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        feature_statistics(a[:1])


def test_the_fid_network_has_the_inception_layout_and_refuses_any_other_weights(tmp_path: Path) -> None:
    import torch

    from vald.eval.inception import build_network, load_fid_inception
    from vald.manifest import sha256_file

    network = build_network()
    # torchvision's Inception-v3 without the auxiliary head has 23,834,568 parameters at 1000 classes; the FID
    # graph has 1008: any wrong kernel, width or branch changes this count
    assert sum(p.numel() for p in network.parameters()) == 23_834_568 + 8 * 2049
    weights = tmp_path / "weights.pth"
    torch.save(network.state_dict(), weights)
    with pytest.raises(InputError) as caught:
        load_fid_inception(weights)
    assert "is not the standard FID Inception weights file pt_inception-2015-12-05-6726825d.pth" in str(caught.value)
    features = load_fid_inception(weights, sha256_prefix=sha256_file(weights)[:8])
    rng = np.random.default_rng(1)
    images = [rng.random((128, 128)).astype(np.float32) for _ in range(3)]
    out = features(images)
    assert out.shape == (3, 2048) and np.isfinite(out).all() and (out >= 0).all()  # after ReLU and averaging
    np.testing.assert_array_equal(out, features(images))
    partial = {k: v for k, v in network.state_dict().items() if not k.startswith("Mixed_7c")}
    torch.save(partial, weights)
    with pytest.raises(InputError, match=r"lacks \d+ Inception tensors"):
        load_fid_inception(weights, sha256_prefix=sha256_file(weights)[:8])


def test_the_shipped_phantom_classifier_follows_the_convention_and_tells_the_classes_apart() -> None:
    from vald.eval.classifier import Classifier
    from vald_train.data import held_out_seeds
    from vald_train.phantoms import Finding, make_phantom

    classifier = Classifier(CLASSIFIER)
    assert classifier.normal == "Normal" and classifier.size == 64 and len(classifier.classes) == 5
    card = json.loads((CLASSIFIER.parent / "card.json").read_text())
    from vald.manifest import sha256_file

    assert card["sha256"] == sha256_file(CLASSIFIER)
    phantoms = [make_phantom(s, 256, kind) for kind in Finding for s in held_out_seeds(4, kind, offset=700)]
    predictions = classifier.predict([p.abnormal for p in phantoms])
    truth = [p.finding.kind for p in phantoms]
    correct = [pred.label.lower() == kind.value for pred, kind in zip(predictions, truth, strict=True)]
    assert np.mean(correct) >= 0.7, [p.label for p in predictions]


def test_a_classifier_outside_the_convention_is_refused_in_one_line(tmp_path: Path) -> None:
    import onnx

    from vald.eval.classifier import Classifier

    model = onnx.load(str(CLASSIFIER))
    del model.metadata_props[:]
    path = tmp_path / "no_classes.onnx"
    onnx.save(model, str(path))
    with pytest.raises(InputError, match="has no 'classes' metadata"):
        Classifier(path)
    with pytest.raises(InputError, match="does not exist"):
        Classifier(tmp_path / "absent.onnx")


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evalset")
    subprocess.run([sys.executable, "-m", "vald_train.dataset", str(out), "--per-type", "2"], check=True)
    return out


def test_vald_eval_scores_every_class_with_the_classifier_check(phantom_set: Path, tmp_path: Path) -> None:
    extra = ["--classifier", str(CLASSIFIER), "--steps", "10", "--quiet"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vald.cli",
            "eval",
            str(phantom_set),
            "--engines",
            str(DEMO),
            "--out",
            str(tmp_path),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "FID not computed: no --inception weights file given" in done.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["dataset"] == {
        "classes": ["Cardiomegaly", "Consolidation", "Effusion", "Nodule"],
        "abnormal": 8,
        "normal": 2,
    }
    assert report["fid"]["computed"] is False
    overall = report["table"]["overall"]
    for key in ("ssim_input_cf", "ms_ssim_input_cf", "ssim_cf_twin", "auroc", "ncc", "removal", "prediction_gain"):
        assert np.isfinite(overall[key]), key
    assert 0.0 <= overall["flipped_to_normal"] <= 1.0 and overall["n"] == 8
    assert overall["auroc"] > 0.6  # the shipped model's maps point at the lesions
    assert all(set(r) >= {"index", "class", "image_sha256"} and "image" not in r for r in report["rows"])
    names = "".join(p.name for p in (phantom_set / "Nodule" / "images").iterdir())
    assert not any(name.split(".")[0] in (tmp_path / "eval.json").read_text() for name in names.split(".png") if name)
    table = (tmp_path / "eval.md").read_text()
    assert table.startswith("| class | n | SSIM in-cf") and "| overall | 8 |" in table and "flip rate" in table


def test_vald_eval_refuses_a_set_without_a_normal_class_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "set" / "Nodule" / "images").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "vald.cli", "eval", str(tmp_path / "set"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"vald: error: dataset {tmp_path / 'set'} has no Normal/images folder (the reference class)"
    )


def test_fid_is_computed_per_class_and_overall_when_the_network_is_given(phantom_set: Path, tmp_path: Path) -> None:
    from vald.config import RunConfig
    from vald.eval.dataset import read_eval_set
    from vald.eval.inception import InceptionFeatures, build_network
    from vald.eval.run import evaluate

    data = read_eval_set(phantom_set, per_class=2)
    path = evaluate(
        data, DEMO, RunConfig(steps=10), tmp_path, inception=InceptionFeatures(build_network()), log=lambda _: None
    )
    report = json.loads(path.read_text())
    assert report["fid"] == {"computed": True, "reference": "real Normal class", "normal_images": 2, "size": 128}
    for label in [*report["dataset"]["classes"], "overall"]:
        assert np.isfinite(report["table"][label]["fid"]) and report["table"][label]["fid"] >= 0, label
    assert "| FID |" in (tmp_path / "eval.md").read_text()
