"""`vald export`: the manifest and graphs it writes, the tokenizer it carries, and bad model folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from vald.config import Precision
from vald.errors import ModelError
from vald.manifest import Manifest, sha256_file
from vald.spec import Component
from vald.tokenizer import PromptTokenizer


def test_manifest_describes_every_component_and_precision(engines: Path, tiny_model: Path) -> None:
    data = json.loads((engines / "manifest.json").read_text())
    assert data["source"]["sha256"] and data["model"]["hidden_size"] == 32
    assert data["model"]["image_size"] == 64 and data["model"]["vae_scale_factor"] == 4
    assert data["scheduler"]["beta_schedule"] == "scaled_linear"
    assert {"torch", "onnx", "diffusers", "transformers"} <= set(data["versions"])
    for component in Component:
        entry = data["components"][component.value]
        assert entry["opset"] == 17 and entry["inputs"] and entry["outputs"]
        for precision in ("fp32", "fp16"):
            files = entry["precisions"][precision]["files"]
            for rel, digest in files.items():
                assert sha256_file(engines / rel) == digest
            graph = onnx.load(str(engines / next(iter(files))))
            onnx.checker.check_model(graph)
            names = [i.name for i in graph.graph.input]
            assert names == [t["name"] for t in entry["inputs"]]
            # dynamic batch axis on every input
            assert all(i.type.tensor_type.shape.dim[0].dim_param for i in graph.graph.input)
    assert Manifest.load(engines).verify(Precision.FP32)


def test_runtime_tokenizer_matches_transformers(engines: Path, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tiny_model / "tokenizer")
    ours = PromptTokenizer(engines / "tokenizer", max_length=77, pad_id=reference.pad_token_id)
    texts = ["Normal chest radiograph, no acute abnormality.", "", "left lower zone consolidation " * 30]
    expected = reference(texts, padding="max_length", max_length=77, truncation=True).input_ids
    assert np.array_equal(ours(texts), np.array(expected))


def _copy(tiny_model: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_model, dst)
    return dst


def test_bad_model_folders_are_clean_errors(tiny_model: Path, tmp_path: Path) -> None:
    from vald_export.model_folder import ModelFolder

    with pytest.raises(ModelError, match="does not exist"):
        ModelFolder.open(tmp_path / "nope")
    bad = _copy(tiny_model, tmp_path)
    shutil.rmtree(bad / "vae")
    with pytest.raises(ModelError, match="no vae/ sub-folder"):
        ModelFolder.open(bad)
    shutil.rmtree(bad)
    bad = _copy(tiny_model, tmp_path)
    (bad / "unet" / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelFolder.open(bad)
    shutil.rmtree(bad)
    bad = _copy(tiny_model, tmp_path)
    cfg = json.loads((bad / "unet" / "config.json").read_text())
    cfg["cross_attention_dim"] = 768
    (bad / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="cross_attention_dim=768 does not equal the text encoder's hidden_size=32"):
        ModelFolder.open(bad)


def test_export_cli_reports_bad_folder(tmp_path: Path, capsys) -> None:
    from vald.cli import main

    assert main(["export", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "no text_encoder/ sub-folder" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_parity_check_rejects_a_graph_that_disagrees_with_torch(engines: Path, tiny_model: Path) -> None:
    """The export's own verification fails loudly when a graph and its module differ."""
    import torch

    from vald.errors import ParityError
    from vald.sessions.torch_ref import load_modules
    from vald_export.verify import check_graph

    manifest = Manifest.load(engines)
    module = load_modules(tiny_model)[Component.VAE_DECODER]
    with torch.no_grad():
        module.vae.post_quant_conv.bias.add_(0.5)  # the module no longer matches the exported graph
    latent = (torch.randn(1, 4, 16, 16),)
    graph = manifest.graph_path(Component.VAE_DECODER, Precision.FP32)
    with pytest.raises(ParityError, match="vae_decoder fp32 disagrees with PyTorch: max abs error"):
        check_graph(module, latent, manifest.specs[Component.VAE_DECODER], graph, Precision.FP32)
