"""The bundled "scenes" variant (digits off-centre among distractors) and the raw-pixel kNN baseline."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ssl.data import default
from hf_ssl.data.default import SCENES_IMAGE_SIZE, load_default_dataset, split_indices
from hf_ssl.eval.baselines import bundled_raw_pixel_knn, pixel_matrix, raw_pixel_knn
from hf_ssl.eval.knn import knn_classify


def scene_bytes(split: str) -> list[bytes]:
    return [image.tobytes() for image in load_default_dataset(split, variant="scenes")["image"]]


def test_scenes_are_the_same_bytes_when_rendered_again():
    first = scene_bytes("test")
    default._scene_canvases.cache_clear()
    assert scene_bytes("test") == first
    assert len(set(first)) == len(first)  # no two scenes alike


def test_each_scene_depends_only_on_its_index_and_split():
    pixels, labels = default._digit_pixels()
    train, test = split_indices(len(pixels))
    canvases, masks, _ = default._scene_canvases()
    for index in (int(train[0]), int(test[5])):
        same_split = test if index in set(test.tolist()) else train
        canvas, mask = default._render_scene(index, pixels, int(labels[index]), same_split)
        assert np.array_equal(canvas, canvases[index]) and np.array_equal(mask, masks[index])


def test_scene_images_did_not_change_when_masks_were_added():
    import hashlib

    canvases, _, _ = default._scene_canvases()
    # SHA-256 of every canvas as rendered before the mask column existed: results measured on
    # the scenes earlier stay valid.
    assert hashlib.sha256(canvases.tobytes()).hexdigest() == \
        "4dc4d1e4aa9d482a3a7e82712d2d7de3563f4501512bab546be84c81e59730f4"


def redrawn_mask(index: int) -> np.ndarray:
    """Scene `index`'s mask recomputed from its parts, independently of the generator's bookkeeping:
    draw the scene without its digit, with the digit alone, and with the lines alone (the same
    random draws), and keep the digit's pixels that are bright, not darker than what lies under
    them and not under a line."""
    pixels, labels = default._digit_pixels()
    train, test = split_indices(len(pixels))
    same_split = test if index in set(test.tolist()) else train
    blank = np.zeros_like(pixels[index])
    without_digit, _ = default._render_scene(index, np.where(np.arange(len(pixels))[:, None, None] == index, 0, pixels),
                                             int(labels[index]), same_split)
    full, _ = default._render_scene(index, pixels, int(labels[index]), same_split)
    no_fragments = pixels.copy()
    no_fragments[np.arange(len(pixels)) != index] = blank
    digit_and_lines, _ = default._render_scene(index, no_fragments, int(labels[index]), same_split)
    nothing = np.zeros_like(pixels)
    lines_only, _ = default._render_scene(index, nothing, int(labels[index]), same_split)
    digit_only = np.where(lines_only > 0, 0, digit_and_lines)  # lines cover what they cross
    under = np.where(lines_only > 0, 0, without_digit)
    stroke = (digit_only >= default.MASK_STROKE_LEVEL) & (digit_only >= under) & (lines_only == 0)
    assert np.array_equal(np.maximum(digit_only, under)[lines_only == 0], full[lines_only == 0])
    return np.where(stroke, labels[index] + 1, 0).astype(np.uint8)


def test_masks_mark_the_labelled_digit_and_nothing_else():
    pixels, labels = default._digit_pixels()
    canvases, masks, _ = default._scene_canvases()
    assert masks.shape == canvases.shape and masks.dtype == np.uint8
    for index in (0, 7, 100, 1500):
        assert np.array_equal(masks[index], redrawn_mask(index))
    # Each scene's mask holds background and its own class only, and the digit shows on it.
    for index in range(0, len(masks), 50):
        assert set(np.unique(masks[index]).tolist()) == {0, int(labels[index]) + 1}
        assert (masks[index] > 0).sum() >= 30
        assert (canvases[index][masks[index] > 0] >= default.MASK_STROKE_LEVEL).all()
    # Bright pixels outside the mask exist: fragments and lines are background.
    assert ((canvases >= 128) & (masks == 0)).sum() > 0.2 * (canvases >= 128).sum()


def test_the_mask_column_follows_the_image_size():
    dataset = load_default_dataset("test", variant="scenes", with_masks=True)
    _, masks, _ = default._scene_canvases()
    _, test = split_indices(len(masks))
    mask = dataset[3]["mask"]
    assert mask.mode == "L" and np.array_equal(np.asarray(mask), masks[test[3]])
    assert np.asarray(dataset[3]["mask"]).max() == dataset[3]["label"] + 1
    small = load_default_dataset("test", image_size=24, variant="scenes", with_masks=True)[3]["mask"]
    assert small.size == (24, 24) and set(np.unique(np.asarray(small))) <= {0, dataset[3]["label"] + 1}
    assert "mask" not in load_default_dataset("test", with_masks=True).column_names  # centred digits: no segmentation
    assert "mask" not in load_default_dataset("test", variant="scenes").column_names  # training reads no masks


def test_split_sizes_and_labels_follow_the_digits():
    for split, size in (("train", 1438), ("test", 359), ("all", 1797)):
        scenes = load_default_dataset(split, variant="scenes")
        digits = load_default_dataset(split)
        assert len(scenes) == size
        assert scenes["label"] == digits["label"]
    train, test = split_indices(1797)
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(set(load_default_dataset("all", variant="scenes")["label"])) == list(range(10))


def test_scene_images_are_rgb_48px_and_resizable():
    image = load_default_dataset("test", variant="scenes")[0]["image"]
    assert image.mode == "RGB" and image.size == (SCENES_IMAGE_SIZE, SCENES_IMAGE_SIZE)
    small = load_default_dataset("test", image_size=32, variant="scenes")[0]["image"]
    assert small.size == (32, 32)


def test_the_digit_is_off_centre_and_distractors_are_present():
    pixels, _ = default._digit_pixels()
    train, _ = split_indices(len(pixels))
    canvases, _, _ = default._scene_canvases()
    # Ink centres spread over the canvas (centred digits would all sit near 23.5).
    rows, columns = np.indices(canvases.shape[1:])
    weights = canvases[train].astype(float)
    centre_rows = (weights * rows).sum(axis=(1, 2)) / weights.sum(axis=(1, 2))
    assert centre_rows.std() > 3
    # More ink than a lone digit: fragments and lines are drawn too.
    lone_digit_ink = np.mean([default._upsample(pixels[i], 28).astype(float).sum() for i in train[:50]])
    assert weights[:50].sum(axis=(1, 2)).mean() > lone_digit_ink


def test_digits_variant_is_unchanged():
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, _ = split_indices(len(digits.images))
    grey = np.clip(np.rint(digits.images[train[0]] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    expected = Image.fromarray(grey, mode="L").resize((32, 32), Image.Resampling.BICUBIC).convert("RGB")
    assert load_default_dataset("train")[0]["image"].tobytes() == expected.tobytes()
    assert load_default_dataset("train", 16)[0]["image"].size == (16, 16)


def test_bad_variant_and_image_size_are_refused():
    with pytest.raises(ValueError, match="variant"):
        load_default_dataset("train", variant="cifar")
    with pytest.raises(ValueError, match="image_size"):
        load_default_dataset("train", image_size=0, variant="scenes")


# ---- raw-pixel kNN ---------------------------------------------------------------------------------

def test_pixel_matrix_accepts_pil_arrays_and_tensors():
    images = [Image.fromarray(np.full((4, 5, 3), value, dtype=np.uint8)) for value in (0, 255)]
    matrix = pixel_matrix(images)
    assert matrix.shape == (2, 60) and matrix[1].eq(1.0).all() and matrix[0].eq(0.0).all()
    assert pixel_matrix(np.zeros((3, 4, 4), dtype=np.uint8)).shape == (3, 16)
    assert pixel_matrix(torch.ones(2, 3, 4, 4)).shape == (2, 48)
    with pytest.raises(ValueError, match="one size"):
        pixel_matrix([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))])


def toy_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 is bright on the left half, class 1 on the right, on a bright grey background."""
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = np.full((count, 6, 6), 180, dtype=np.uint8)
    for index, label in enumerate(labels):
        images[index, :, 3 * label : 3 * label + 3] = 230
    noise = generator.integers(-20, 21, images.shape)
    return np.clip(images + noise, 0, 255).astype(np.uint8), labels


def test_raw_pixel_knn_separates_a_toy_case():
    train_images, train_labels = toy_images(20, 0)
    test_images, test_labels = toy_images(10, 1)
    result = raw_pixel_knn(train_images, train_labels, test_images, test_labels, k=5)
    assert result["accuracy"] == 1.0


def test_raw_pixel_knn_is_knn_on_centred_pixels():
    generator = np.random.default_rng(2)
    train_images = generator.integers(0, 256, (30, 5, 5), dtype=np.uint8)
    test_images = generator.integers(0, 256, (12, 5, 5), dtype=np.uint8)
    train_labels, test_labels = generator.integers(0, 3, 30), generator.integers(0, 3, 12)
    train = torch.from_numpy(train_images.reshape(30, -1).astype(np.float32) / 255)
    test = torch.from_numpy(test_images.reshape(12, -1).astype(np.float32) / 255)
    mean = train.mean(dim=0)
    expected = knn_classify(train - mean, torch.as_tensor(train_labels), test - mean, torch.as_tensor(test_labels), k=7)
    assert raw_pixel_knn(train_images, train_labels, test_images, test_labels, k=7) == expected


@pytest.mark.slow
def test_raw_pixels_solve_digits_but_not_scenes():
    assert bundled_raw_pixel_knn("digits")["accuracy"] > 0.95
    assert bundled_raw_pixel_knn("scenes")["accuracy"] < 0.7


def test_pre_training_on_the_scenes_defaults_to_their_48_px_and_evaluates_on_them():
    from hf_ssl.training.arguments import PretrainingArguments, resolve_arguments

    resolved = resolve_arguments(PretrainingArguments(dataset_name="digit-scenes"))
    assert resolved.image_size == 48 and resolved.eval_dataset_name == "digit-scenes"
    assert resolved.output_dir == resolve_arguments(PretrainingArguments()).output_dir  # the scenes ARE the default run
    assert resolve_arguments(PretrainingArguments(dataset_name="digit-scenes", image_size=32)).image_size == 32
    plain = resolve_arguments(PretrainingArguments(dataset_name="digits"))
    assert (plain.image_size, plain.eval_dataset_name) == (32, "digits")
    assert plain.output_dir.endswith("-digits")  # not the default run's folder
