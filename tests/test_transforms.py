"""Augmentation contract: output keys and shapes per name, normalisation values, determinism under a seed."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from hf_ssl.transforms import AUGMENTATIONS, build_transform


def _image(size=40, color=(255, 0, 128)):
    return Image.new("RGB", (size, size), color)


def test_light_gives_one_view_of_the_requested_size():
    output = build_transform("light", 32)(_image())
    assert set(output) == {"pixel_values"}
    assert output["pixel_values"].shape == (3, 32, 32)
    assert output["pixel_values"].dtype == torch.float32


def test_simclr_gives_two_views():
    output = build_transform("simclr", 32)(_image())
    assert output["pixel_values"].shape == (2, 3, 32, 32)


def test_multicrop_gives_global_and_local_crops():
    output = build_transform("multicrop", 32, number_of_local_crops=4)(_image())
    # local crop side = round(32 * 96 / 224) = 14
    assert output["global_crops"].shape == (2, 3, 32, 32)
    assert output["local_crops"].shape == (4, 3, 14, 14)


def test_eval_normalises_with_the_given_mean_and_std():
    # A constant (255, 0, 128) image: (1 - 0.5) / 0.5 = 1, (0 - 0.5) / 0.5 = -1, (128/255 - 0.5) / 0.5 = 1/255.
    output = build_transform("eval", 16, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))(_image())
    pixels = output["pixel_values"]
    assert pixels.shape == (3, 16, 16)
    torch.testing.assert_close(pixels[0], torch.full((16, 16), 1.0))
    torch.testing.assert_close(pixels[1], torch.full((16, 16), -1.0))
    torch.testing.assert_close(pixels[2], torch.full((16, 16), 1 / 255), atol=1e-6, rtol=0)


def test_eval_is_deterministic_and_light_is_random_but_seedable():
    image = Image.effect_mandelbrot((48, 48), (-2, -1.5, 1, 1.5), 50).convert("RGB")
    evaluation = build_transform("eval", 32)
    assert torch.equal(evaluation(image)["pixel_values"], evaluation(image)["pixel_values"])
    light = build_transform("light", 32)
    torch.manual_seed(3)
    first = light(image)["pixel_values"]
    torch.manual_seed(3)
    again = light(image)["pixel_values"]
    different = [light(image)["pixel_values"] for _ in range(5)]
    assert torch.equal(first, again)
    assert any(not torch.equal(first, view) for view in different)


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="augmentation must be one of") as error:
        build_transform("mixup", 32)
    for name in AUGMENTATIONS:
        assert name in str(error.value)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_truncated_blur_matches_the_full_kernel_and_draws_sigma_the_same_way(sigma):
    from torchvision.transforms import v2

    from hf_ssl.transforms.augmentations import TruncatedGaussianBlur

    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 224, 224), generator=generator, dtype=torch.uint8)
    full = v2.GaussianBlur(23, sigma=sigma)(image.float())
    truncated = TruncatedGaussianBlur(23, sigma=sigma)(image.float())
    assert (truncated - full).abs().max() < 0.01  # of 255
    random_full, random_truncated = v2.GaussianBlur(23), TruncatedGaussianBlur(23)
    torch.manual_seed(3)
    expected = random_full(image.float())
    torch.manual_seed(3)
    assert (random_truncated(image.float()) - expected).abs().max() < 0.01  # same sigma drawn
    # A small kernel is never widened.
    assert torch.equal(TruncatedGaussianBlur(3, sigma=sigma)(image), v2.GaussianBlur(3, sigma=sigma)(image))


def test_truncated_blur_drops_taps_beyond_four_sigma():
    from torchvision.transforms import v2

    from hf_ssl.transforms.augmentations import TruncatedGaussianBlur

    impulse = torch.zeros(1, 41, 41)
    impulse[0, 20, 20] = 1.0
    full = v2.GaussianBlur(23, sigma=2.0)(impulse)
    truncated = TruncatedGaussianBlur(23, sigma=2.0)(impulse)  # 4 sigma = 8 px: a 17-tap kernel
    assert full[0, 20, 30] > 0 and truncated[0, 20, 30] == 0  # 10 px away
    assert truncated[0, 20, 28] > 0  # 8 px away
