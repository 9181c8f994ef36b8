from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retrieval.autoret.features import FeatureConfig, FeatureStage, extract_features


@pytest.fixture(scope="module")
def stage() -> FeatureStage:
    return FeatureStage(FeatureConfig(input_size=64))


def test_key_names_backbone_size_layout_and_layers_and_bad_values_are_refused() -> None:
    assert FeatureConfig().key == "efficientnet_lite0-128px-2x2-regions-stages5-7"
    assert FeatureConfig().dim == 112 + 192 + 320
    # Head features keep the key they were cached under before layers were a choice.
    head = FeatureConfig(input_size=96, layout="crops", layers="head")
    assert head.key == "efficientnet_lite0-96px-2x2-crops" and head.dim == 1280
    assert FeatureConfig(grid=3).steps == 10
    with pytest.raises(ValueError, match="input_size"):
        FeatureConfig(input_size=8)
    with pytest.raises(ValueError, match="layout"):
        FeatureConfig(layout="tiles")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layers"):
        FeatureConfig(layers="stage3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown feature config fields: colour"):
        FeatureConfig.from_dict({"colour": True})
    assert FeatureConfig.from_dict(FeatureConfig(input_size=96).to_dict()) == FeatureConfig(
        input_size=96
    )


def test_a_configuration_recorded_before_layers_existed_reads_as_head_features() -> None:
    recorded = {"backbone": "efficientnet_lite0", "input_size": 96, "grid": 2, "layout": "regions"}
    cfg = FeatureConfig.from_dict(recorded)
    assert cfg.layers == "head" and cfg.key == "efficientnet_lite0-96px-2x2-regions"


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 50, 70), (2, 4, 40, 40)])
def test_grey_colour_and_alpha_images_of_any_size_give_five_steps(
    stage: FeatureStage, shape: tuple[int, ...]
) -> None:
    x = torch.rand(shape)
    features = stage(x)
    assert features.shape == (2, 5, 624)
    assert torch.isfinite(features).all()


def test_grey_equals_the_same_image_as_rgb(stage: FeatureStage) -> None:
    grey = torch.rand(1, 1, 32, 32)
    assert torch.allclose(stage(grey), stage(grey.expand(-1, 3, -1, -1)))


def test_regions_are_averages_of_one_feature_map_and_whole_image_is_its_mean() -> None:
    head = FeatureStage(FeatureConfig(input_size=64, layers="head"))
    x = torch.rand(1, 3, 64, 64)
    (feature_map,) = head._maps(x)  # 1 x 1280 x 2 x 2 at 64 px
    features = head(x)
    assert torch.allclose(features[0, :4], feature_map[0].flatten(1).T, atol=1e-6)
    assert torch.allclose(features[0, 4], feature_map[0].mean(dim=(1, 2)), atol=1e-6)
    # The head's map is the network's own: the classifier pools exactly it.
    assert torch.allclose(feature_map, head.net.features(head.net.normalize_unit(x)), atol=1e-5)


def test_stage_features_concatenate_the_last_three_stages_pooled_over_each_region(
    stage: FeatureStage,
) -> None:
    x = torch.rand(1, 3, 64, 64)
    maps = stage._maps(x)  # stride 16, 32, 32: 4x4, 2x2, 2x2 at 64 px
    assert [tuple(m.shape[1:]) for m in maps] == [(112, 4, 4), (192, 2, 2), (320, 2, 2)]
    features = stage(x)
    quarter = maps[0][0, :, :2, :2].mean((1, 2))
    top_left = torch.cat([quarter, maps[1][0, :, 0, 0], maps[2][0, :, 0, 0]])
    assert torch.allclose(features[0, 0], top_left, atol=1e-5)
    whole = torch.cat([m[0].mean(dim=(1, 2)) for m in maps])
    assert torch.allclose(features[0, 4], whole, atol=1e-5)
    # The last map is the block stack's own output, the one the head convolution reads.
    net = stage.net
    y = F.relu6(net._bn0(net._conv_stem(net.normalize_unit(x))))
    for block in net._blocks:
        y = block(y)
    assert torch.allclose(maps[2], y, atol=1e-5)


@pytest.mark.parametrize("layers", ["stages5-7", "head"])
def test_crops_run_the_backbone_on_each_patch(layers: str) -> None:
    crops = FeatureStage(FeatureConfig(input_size=32, layout="crops", layers=layers))  # type: ignore[arg-type]
    x = torch.rand(1, 3, 40, 40)
    features = crops(x)
    top_left = torch.cat([m.mean(dim=(2, 3)) for m in crops._maps(x[:, :, :20, :20])], dim=1)
    assert features.shape == (1, 5, crops.config.dim)
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
    assert features.dtype == torch.float16 and features.shape == (5, 5, 624)
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
