"""The training recipe on a tiny architecture: a run from scratch, and a run continued from its model folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

from vald_train.models import Architecture
from vald_train.train import Recipe, run

TINY = Architecture(
    image_size=32,
    vae_blocks=(8, 8),
    latent_channels=4,
    hidden=32,
    text_layers=1,
    unet_blocks=(16, 16, 32),
    unet_layers=1,
)
RECIPE = Recipe(
    n_seeds=6,
    vae_steps=2,
    vae_batch=2,
    vae_crop=16,
    unet_steps=3,
    unet_batch=2,
    decoder_steps=1,
    checkpoint_every=1,
    threads=1,
    arch=TINY,
)


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


def test_a_continued_run_trains_only_the_unet_and_keeps_the_history(tmp_path: Path) -> None:
    first = run(tmp_path / "first", RECIPE, log=lambda _m: None)
    (tmp_path / "first" / "train.log").write_text("stage one\n", encoding="utf-8")
    recipe = Recipe(**{**RECIPE.__dict__, "init_from": str(first), "seed": 1, "unet_steps": 2, "decoder_steps": 0})
    second = run(tmp_path / "second", recipe, log=lambda _m: None)

    for part in ("vae", "text_encoder"):  # kept as they were
        a, b = _weights(first / part), _weights(second / part)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    a, b = _weights(first / "unet"), _weights(second / "unet")
    assert a.keys() == b.keys() and any(not np.array_equal(a[k], b[k]) for k in a)  # trained further
    previous = tmp_path / "second" / "previous"
    assert (previous / "train.log").read_text(encoding="utf-8") == "stage one\n"
    assert json.loads((previous / "recipe.json").read_text(encoding="utf-8"))["init_from"] == ""
    assert json.loads((tmp_path / "second" / "recipe.json").read_text(encoding="utf-8"))["init_from"] == str(first)


def test_a_continued_run_can_train_only_the_decoder_with_the_encoder_frozen(tmp_path: Path) -> None:
    first = run(tmp_path / "first", RECIPE, log=lambda _m: None)
    recipe = Recipe(**{**RECIPE.__dict__, "init_from": str(first), "seed": 1, "unet_steps": 0, "decoder_steps": 2})
    second = run(tmp_path / "second", recipe, log=lambda _m: None)

    for part in ("unet", "text_encoder"):
        a, b = _weights(first / part), _weights(second / part)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    a, b = _weights(first / "vae"), _weights(second / "vae")
    changed = {k.split(".")[0] for k in a if not np.array_equal(a[k], b[k])}
    assert changed and changed <= {"decoder", "post_quant_conv"}  # the latent space the UNet reads is unchanged
    assert (tmp_path / "second" / "decoder_loss.csv").is_file()


def test_continuing_from_a_folder_without_a_model_says_so(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not a diffusers folder"):
        run(tmp_path / "work", Recipe(**{**RECIPE.__dict__, "init_from": str(tmp_path)}), log=lambda _m: None)
