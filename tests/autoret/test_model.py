from __future__ import annotations

import pytest
import torch

from retrieval.autoret.model import DEFAULT_EMBED_DIM, ModelConfig, create_model, grid_patches
from tests.autoret.conftest import tiny_model


def test_default_model_embeds_to_the_platform_dimension() -> None:
    model = create_model(in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, DEFAULT_EMBED_DIM)
    assert model.config.patching and model.config.grid == 2 and model.config.rnn == "gru"


@pytest.mark.parametrize("size", [(16, 16), (24, 40), (33, 17), (64, 64)])
@pytest.mark.parametrize("name", ["autoret", "autoembedder"])
def test_any_input_size_gives_the_same_embedding_size(name: str, size: tuple[int, int]) -> None:
    model = tiny_model(name).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 1, *size))
    assert out.shape == (3, 8)
    assert torch.isfinite(out).all()


def test_grey_and_colour_inputs_both_work() -> None:
    grey_model, colour_model = tiny_model(in_channels=1).eval(), tiny_model(in_channels=3).eval()
    with torch.no_grad():
        for model in (grey_model, colour_model):
            for channels in (1, 3, 4):
                assert model(torch.rand(2, channels, 20, 20)).shape == (2, 8)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"rnn": "lstm", "bidirectional": False},
        {"grid": 3, "include_whole_image": False},
        {"patching": False},
        {"dilation_rates": (), "spp_levels": (1,), "spp_pool": "max"},
    ],
)
def test_every_parameter_receives_a_gradient_and_outputs_are_finite(overrides: dict) -> None:
    model = tiny_model(**overrides)
    out = model(torch.rand(6, 1, 18, 18))
    assert torch.isfinite(out).all()
    out.pow(2).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.count_nonzero(parameter.grad) > 0, name


def test_features_are_the_pre_projection_vector_and_embed_from_selects_them() -> None:
    model = tiny_model(embed_from="features").eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        features = model.features(x)
        assert features.shape == (2, 2 * 16)  # bidirectional GRU, hidden 16
        assert torch.equal(model.embed(x), features)
        assert torch.allclose(model(x), model.projection(features))
    assert model.output_dim == 32


def test_patches_cover_the_image_in_raster_order() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    patches = grid_patches(x, 2)
    assert patches.shape == (1, 4, 1, 2, 2)
    assert patches[0, 0, 0].tolist() == [[0, 1], [4, 5]]
    assert patches[0, 3, 0].tolist() == [[10, 11], [14, 15]]
    odd = grid_patches(torch.rand(1, 1, 5, 7), 2)
    assert odd.shape == (1, 4, 1, 2, 3)


def test_whole_image_is_the_last_recurrent_step() -> None:
    model = tiny_model().eval()
    x = torch.rand(2, 1, 16, 16)
    seen: list[torch.Tensor] = []
    model.spatial.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model(x)
        whole = model.spatial(x)
    assert [s.shape[0] for s in seen[:2]] == [8, 2]  # 2 images x 4 patches, then 2 whole images
    assert torch.allclose(seen[1], whole)


def test_resnet18_backbone_builds_and_embeds() -> None:
    model = create_model("autoret-resnet18", in_channels=3, embed_dim=16).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 16)


def test_efficientnet_lite0_backbone_takes_grey_images_of_any_size() -> None:
    model = create_model("autoret-efficientnet-lite0", pretrained=False, embed_dim=16).eval()
    assert model.config.in_channels == 3 and model.spatial.backbone.out_channels == 1280
    with torch.no_grad():
        assert model(torch.rand(1, 1, 48, 80)).shape == (1, 16)


def test_config_round_trips_through_json_dict() -> None:
    cfg = ModelConfig(widths=(8, 16), dilation_rates=(1, 3), image_size=32)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TypeError, match="unknown model config"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": "red"})


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vgg")


def test_sphere_radius_puts_every_embedding_on_that_sphere_and_keeps_features() -> None:
    plain, sphere = tiny_model().eval(), tiny_model(sphere_radius=5.0).eval()
    sphere.load_state_dict(plain.state_dict())
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        norms = sphere(x).norm(dim=1)
        assert torch.allclose(norms, torch.full_like(norms, 5.0), atol=1e-4)
        # The same direction as the plain projection: only the length changes.
        assert torch.allclose(sphere(x), 5.0 * torch.nn.functional.normalize(plain(x), dim=1))
        assert torch.equal(sphere.features(x), plain.features(x))
    with pytest.raises(ValueError, match="sphere_radius must be positive"):
        tiny_model(sphere_radius=0.0)
