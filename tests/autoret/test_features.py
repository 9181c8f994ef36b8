from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retrieval.autoret.features import FeatureConfig, FeatureStage, extract_features


@pytest.fixture(scope="module")
def stage() -> FeatureStage:
    return FeatureStage(FeatureConfig(input_size=64))


def test_key_names_backbone_size_and_layout_and_bad_values_are_refused() -> None:
    assert FeatureConfig().key == "efficientnet_lite0-128px-2x2-regions"
    assert FeatureConfig(input_size=96, layout="crops").key == "efficientnet_lite0-96px-2x2-crops"
    assert FeatureConfig(grid=3).steps == 10
    with pytest.raises(ValueError, match="input_size"):
        FeatureConfig(input_size=8)
    with pytest.raises(ValueError, match="layout"):
        FeatureConfig(layout="tiles")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown feature config fields: colour"):
        FeatureConfig.from_dict({"colour": True})
    assert FeatureConfig.from_dict(FeatureConfig(input_size=96).to_dict()) == FeatureConfig(
        input_size=96
    )


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 50, 70), (2, 4, 40, 40)])
def test_grey_colour_and_alpha_images_of_any_size_give_five_steps(
    stage: FeatureStage, shape: tuple[int, ...]
) -> None:
    x = torch.rand(shape)
    features = stage(x)
    assert features.shape == (2, 5, 1280)
    assert torch.isfinite(features).all()


def test_grey_equals_the_same_image_as_rgb(stage: FeatureStage) -> None:
    grey = torch.rand(1, 1, 32, 32)
    assert torch.allclose(stage(grey), stage(grey.expand(-1, 3, -1, -1)))


def test_regions_are_averages_of_one_feature_map_and_whole_image_is_its_mean(
    stage: FeatureStage,
) -> None:
    x = torch.rand(1, 3, 64, 64)
    feature_map = stage._map(x)  # 1 x 1280 x 2 x 2 at 64 px
    features = stage(x)
    assert torch.allclose(features[0, :4], feature_map[0].flatten(1).T, atol=1e-6)
    assert torch.allclose(features[0, 4], feature_map[0].mean(dim=(1, 2)), atol=1e-6)


def test_crops_run_the_backbone_on_each_patch() -> None:
    crops = FeatureStage(FeatureConfig(input_size=32, layout="crops"))
    x = torch.rand(1, 3, 40, 40)
    features = crops(x)
    top_left = crops._map(x[:, :, :20, :20]).mean(dim=(2, 3))
    assert features.shape == (1, 5, 1280)
    assert torch.allclose(features[0, 0], top_left[0], atol=1e-5)


def test_the_stage_is_frozen_and_stays_in_eval_mode(stage: FeatureStage) -> None:
    stage.train()
    assert not stage.net.training
    assert not any(p.requires_grad for p in stage.parameters())
    x = torch.rand(4, 3, 32, 32)
    # BatchNorm uses its ImageNet statistics, not the batch's: one image alone gives the same.
    assert torch.allclose(stage(x)[:1], stage(x[:1]), atol=1e-4)


def test_extract_features_is_float16_batched_and_reports_progress(stage: FeatureStage) -> None:
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    seen: list[tuple[int, int]] = []
    features = extract_features(
        stage, images, batch_size=2, progress=lambda d, t: seen.append((d, t))
    )
    assert features.dtype == torch.float16 and features.shape == (5, 5, 1280)
    assert seen == [(2, 5), (4, 5), (5, 5)]
    one = stage(images[:1].float() / 255)
    assert torch.allclose(features[0].float(), one[0], rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="uint8"):
        extract_features(stage, images.float())


def test_pretrained_features_find_a_shifted_shape_closer_than_another_shape(
    stage: FeatureStage,
) -> None:
    # Wide-margin sanity check that the ImageNet weights are in use: two crops of one synthetic
    # shape are closer than that shape and a different one.
    canvas = torch.zeros(3, 1, 64, 64)
    canvas[0, :, 16:48, 8:56] = 1.0  # a wide bar
    canvas[1, :, 12:44, 10:58] = 1.0  # the same bar, shifted
    canvas[2, :, 8:56, 28:36] = 1.0  # a tall thin bar
    whole = F.normalize(stage(canvas)[:, -1], dim=1)
    assert (whole[0] @ whole[1]) > (whole[0] @ whole[2])
