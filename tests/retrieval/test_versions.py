"""retrieval/versions.py reads a version's alpha as the network was trained with it."""

from __future__ import annotations

import pytest

from retrieval import versions
from retrieval.autoret.train import TrainConfig
from retrieval.models import ModelVersion


def test_alpha_is_read_from_the_recorded_training_config() -> None:
    assert versions.alpha_of(ModelVersion(config={"train": {"alpha": 4}})) == 4.0
    assert versions.alpha_of(ModelVersion(config={})) == TrainConfig.alpha
    assert versions.alpha_of(ModelVersion(config={"train": {"alpha": "x"}})) == TrainConfig.alpha
    head = ModelVersion(config={"head": {"sphere_radius": 5.0}, "train": {"alpha": None}})
    assert versions.alpha_of(head) == pytest.approx(5.0 * 2**0.5)
