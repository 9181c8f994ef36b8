from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retrieval.autoret.checkpoint import CheckpointError, load_model, load_weights, save_checkpoint
from tests.autoret.conftest import tiny_model


def test_checkpoint_is_safetensors_plus_json_and_reloads_the_same_network(tmp_path: Path) -> None:
    model = tiny_model(image_size=16).eval()
    with torch.no_grad():
        model(torch.rand(8, 1, 16, 16))  # nothing changes in eval mode, but exercise buffers
    save_checkpoint(tmp_path, model, step=3, metrics={"map": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "model.safetensors"]
    loaded = load_model(tmp_path)
    assert loaded.config == model.config and not loaded.training
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_loading_into_another_architecture_gives_one_clear_error(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, tiny_model())
    with pytest.raises(CheckpointError, match="another architecture") as error:
        load_weights(tiny_model(patching=False), tmp_path)
    assert "\n" not in str(error.value)


def test_a_directory_without_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(tmp_path)


def test_weights_from_another_save_than_the_json_are_detected(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, tiny_model(), step=5)
    (tmp_path / "model.safetensors").rename(tmp_path / "old.safetensors")
    save_checkpoint(tmp_path, tiny_model(), step=6)
    (tmp_path / "old.safetensors").replace(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="holds step 5"):
        load_model(tmp_path)
