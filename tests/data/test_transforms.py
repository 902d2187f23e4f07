from __future__ import annotations

import numpy as np
import pytest

from pleura.data import (
    Compose,
    RandomGain,
    RandomGamma,
    RandomHorizontalFlip,
    RandomScaleCrop,
    SpeckleNoise,
    default_augmentation,
)
from pleura.labels import DENSE


def _sector_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """Random texture inside a fan, exact zeros outside it."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.05, 1.0, (size, size)).astype(np.float32)
    rows, cols = np.indices((size, size))
    image[np.abs(cols - size / 2) > rows / 2 + 4] = 0.0
    return image


@pytest.mark.parametrize("transform", [RandomGain(6.0), RandomGamma((0.5, 2.0)), SpeckleNoise(1.0)])
def test_intensity_transforms_keep_outside_zero_and_range(transform):
    image = _sector_image()
    outside = image == 0
    assert outside.any() and (~outside).any()
    for seed in range(20):
        out, mask = transform(image, None, np.random.default_rng(seed))
        assert mask is None
        assert out.dtype == np.float32 and out.shape == image.shape
        assert np.all(out[outside] == 0)
        assert out.min() >= 0 and out.max() <= 1
        assert not np.array_equal(out, image)


def test_gain_is_one_factor_for_unclipped_pixels():
    image = np.full((8, 8), 0.25, dtype=np.float32)
    image[0, 0] = 0.1
    out, _ = RandomGain(3.0)(image, None, np.random.default_rng(1))
    ratio = out / image
    assert np.allclose(ratio, ratio[0, 0]) and 10 ** (-3 / 20) <= ratio[0, 0] <= 10 ** (3 / 20)


def test_speckle_roughly_preserves_mean():
    image = np.full((128, 128), 0.5, dtype=np.float32)
    out, _ = SpeckleNoise(0.3)(image, None, np.random.default_rng(0))
    assert out.std() > 0.005
    assert abs(out.mean() - 0.5) < 0.01


def test_horizontal_flip_moves_image_and_mask_together():
    image = np.zeros((4, 6), dtype=np.float32)
    image[:, 0] = 1.0
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[:, 0] = 3
    out, out_mask = RandomHorizontalFlip(p=1.0)(image, mask, np.random.default_rng(0))
    assert np.array_equal(out, image[:, ::-1]) and np.array_equal(out_mask, mask[:, ::-1])
    assert out[0, -1] == 1.0 and out_mask[0, -1] == 3
    same, same_mask = RandomHorizontalFlip(p=0.0)(image, mask, np.random.default_rng(0))
    assert np.array_equal(same, image) and np.array_equal(same_mask, mask)


def test_horizontal_flip_happens_about_half_the_time():
    image = np.arange(12, dtype=np.float32).reshape(3, 4) / 12
    flips = sum(
        not np.array_equal(RandomHorizontalFlip()(image, None, np.random.default_rng(s))[0], image) for s in range(200)
    )
    assert 70 < flips < 130


def test_scale_crop_keeps_size_top_and_mask_classes():
    rng = np.random.default_rng(0)
    image = _sector_image()
    image[0, 28:36] = 1.0
    mask = rng.choice(np.array([0, 3, 5], dtype=np.uint8), size=(64, 64))
    mask[0] = 3
    t = RandomScaleCrop(0.1, mask_fill=7)
    padded = 0
    for seed in range(30):
        out, out_mask = t(image, mask, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.float32
        assert out_mask.shape == mask.shape and out_mask.dtype == mask.dtype
        assert set(np.unique(out_mask)) <= {0, 3, 5, 7}  # nearest: no interpolated classes
        assert np.all(out_mask[0, 16:48] == 3)  # the top row stays the top row
        assert np.all(out[0, 30:34] == 1.0)  # the top-centre is fixed
        padded += bool((out_mask[-1] == 7).any())
    assert 5 < padded < 25  # zooming out pads the bottom with the fill value, zooming in does not


def test_no_vertical_flip_in_default_augmentation():
    image = np.full((64, 64), 0.3, dtype=np.float32)
    image[0] = 1.0
    mask = np.full((64, 64), 5, dtype=np.uint8)
    mask[0] = 1
    aug = default_augmentation("dense")
    for seed in range(50):
        out, out_mask = aug(image, mask, np.random.default_rng(seed))
        assert int(np.argmax(out.mean(axis=1))) < 64 // 10
        assert np.all(out_mask[0, 8:56] == 1) and not np.any(out_mask[1:] == 1)


def test_default_augmentation_pads_masks_with_outside_scan():
    def fill(schema):
        return next(t.mask_fill for t in default_augmentation(schema).transforms if isinstance(t, RandomScaleCrop))

    assert fill("dense") == DENSE.index("outside_scan") == 7
    assert fill("anatomy") == 0 and fill("sparse") == 0 and fill(None) == 0


def test_same_rng_seed_same_output_and_compose_order():
    image = _sector_image()
    aug = default_augmentation(None)
    a, _ = aug(image, None, np.random.default_rng(3))
    b, _ = aug(image, None, np.random.default_rng(3))
    c, _ = aug(image, None, np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    empty, none = Compose([])(image, None, np.random.default_rng(0))
    assert empty is image and none is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomGain(-1),
        lambda: RandomGamma((0.0, 1.0)),
        lambda: RandomGamma((1.5, 1.0)),
        lambda: SpeckleNoise(1.5),
        lambda: RandomScaleCrop(1.0),
        lambda: RandomHorizontalFlip(2.0),
    ],
)
def test_bad_parameters_raise(make):
    with pytest.raises(ValueError, match="should"):
        make()
