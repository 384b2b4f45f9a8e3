"""Linear segmentation on frozen feature maps: mean IoU by hand, the convex fit, cases with a known
answer, masks read from data, and the protocol end to end through ``hf-ssl evaluate``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hf_ssl.eval import segmentation
from hf_ssl.eval.data import IGNORE_INDEX, DataSelection, LabelledData
from hf_ssl.eval.segmentation import (fit_linear_segmentation, linear_segmentation, local_patch_pixels,
                                      predict_segmentation, segmentation_metrics, standardise_maps)

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1"}

# ---------------------------------------------------------------- metrics


def test_mean_iou_and_pixel_accuracy_by_hand():
    masks = torch.tensor([[[0, 0], [1, 1]], [[2, 2], [0, 0]]])
    predictions = torch.tensor([[[0, 1], [1, 1]], [[2, 0], [0, 0]]])
    # class 0: TP 3, FP 1 (a 2 taken for 0), FN 1 (a 0 taken for 1) -> 3 / 5; class 1: TP 2, FP 1 -> 2 / 3;
    # class 2: TP 1, FN 1 -> 1 / 2.
    metrics = segmentation_metrics(predictions, masks, num_classes=4)  # class 3 absent everywhere: no IoU
    assert metrics["mean_iou"] == pytest.approx((3 / 5 + 2 / 3 + 1 / 2) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(6 / 8)


def test_ignored_pixels_count_nowhere_and_a_predicted_absent_class_scores_zero():
    masks = torch.tensor([[[0, IGNORE_INDEX], [1, 1]]])
    predictions = torch.tensor([[[2, 1], [1, 1]]])
    metrics = segmentation_metrics(predictions, masks, num_classes=3)
    # class 0: TP 0, FN 1 -> 0; class 1: TP 2 -> 1; class 2: FP 1 -> 0 (predicted but absent: counted)
    assert metrics["mean_iou"] == pytest.approx(1 / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(2 / 3)


def test_local_patch_pixels_are_each_cells_pixels():
    pixels = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    cells = local_patch_pixels(pixels, 4)
    assert cells.shape == (2, 2, 2, 3 * 16)
    assert torch.equal(cells[1, 0, 1], pixels[1, :, 0:4, 4:8].reshape(-1))


# ---------------------------------------------------------------- the fit


def quadrant_problem(count: int, seed: int, informative: bool = True):
    """Feature maps on a 4x4 grid of 16x16 images, each cell one class (0-2) of the mask's 4x4 block;
    informative maps carry the class one-hot plus noise, uninformative ones noise only."""
    generator = torch.Generator().manual_seed(seed)
    cell_classes = torch.randint(0, 3, (count, 4, 4), generator=generator)
    maps = torch.randn(count, 4, 4, 8, generator=generator) * 0.3
    if informative:
        maps[..., :3] += 3 * F.one_hot(cell_classes, 3).float()
    masks = cell_classes.repeat_interleave(4, 1).repeat_interleave(4, 2)  # (count, 16, 16)
    return maps, masks, cell_classes[:, 0, 0]


def objective(maps, masks, weight, bias, weight_decay):
    logits = F.interpolate((maps @ weight.T + bias).permute(0, 3, 1, 2), size=masks.shape[-2:], mode="bilinear",
                           align_corners=False)
    return F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX) + 0.5 * weight_decay * weight.square().sum()


def test_the_fit_reaches_the_optimum_of_the_stated_objective():
    maps, masks, _ = quadrant_problem(12, seed=0)
    masks[0, :3, :3] = IGNORE_INDEX
    (maps,) = standardise_maps(maps)
    weight, bias = fit_linear_segmentation(maps, masks, 3, weight_decay=1e-2, max_iterations=200)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    objective(maps, masks, weight, bias, 1e-2).backward()
    assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4


def test_chunked_and_whole_fits_agree(monkeypatch):
    maps, masks, _ = quadrant_problem(10, seed=1)
    (maps,) = standardise_maps(maps)
    whole = fit_linear_segmentation(maps, masks, 3, 1e-2, max_iterations=300)
    monkeypatch.setattr(segmentation, "_CHUNK_LOGITS", 3 * 16 * 16 * 3)  # 3 images per chunk
    chunked = fit_linear_segmentation(maps, masks, 3, 1e-2, max_iterations=300)
    assert torch.allclose(whole[0], chunked[0], atol=1e-3) and torch.allclose(whole[1], chunked[1], atol=1e-3)
    assert torch.equal(predict_segmentation(maps, *whole, (16, 16)), predict_segmentation(maps, *chunked, (16, 16)))


def test_informative_maps_segment_and_noise_does_not():
    train = quadrant_problem(40, seed=2)
    test = quadrant_problem(20, seed=3)
    good = linear_segmentation(train[0], train[1], train[2], test[0], test[1], num_classes=3)
    assert good["mean_iou"] > 0.8 and good["validated"] and good["weight_decay"] in segmentation.WEIGHT_DECAY_GRID
    assert good["feature_grid"] == [4, 4]
    noise_train = quadrant_problem(40, seed=2, informative=False)
    noise_test = quadrant_problem(20, seed=3, informative=False)
    noise = linear_segmentation(noise_train[0], noise_train[1], noise_train[2], noise_test[0], noise_test[1], 3)
    assert noise["mean_iou"] < 0.4


def test_without_two_images_per_class_nothing_is_validated():
    maps, masks, labels = quadrant_problem(3, seed=4)
    result = linear_segmentation(maps, masks, torch.arange(3), maps, masks, num_classes=3)
    assert not result["validated"] and result["weight_decay"] == max(segmentation.WEIGHT_DECAY_GRID)
    with pytest.raises(ValueError, match="no labelled pixel"):
        fit_linear_segmentation(maps, torch.full_like(masks, IGNORE_INDEX), 3, 1e-3)


# ---------------------------------------------------------------- fine-tuning


def test_the_decoder_upsamples_as_close_to_the_image_as_it_can():
    from hf_ssl.modeling.segmentation import decoder_layers

    assert [decoder_layers(grid, 48) for grid in (48, 24, 12, 6, 3, 1)] == [0, 1, 2, 3, 4, 4]
    assert decoder_layers(14, 224) == 4 and decoder_layers(7, 224) == 4  # capped: the rest is bilinear


def test_masks_follow_the_images_geometric_augmentation():
    from hf_ssl.eval.finetune import augment_batch_with_masks

    generator = torch.Generator().manual_seed(0)
    masks = quadrant_problem(8, seed=5)[1]  # (8, 16, 16) classes 0-2 in 4x4 blocks
    pixels = F.one_hot(masks, 3).permute(0, 3, 1, 2).float() * 4 - 2  # each class its own bright channel
    same = augment_batch_with_masks(pixels, masks, "none", generator)
    assert same[0] is pixels and same[1] is masks
    moved_pixels, moved_masks = augment_batch_with_masks(pixels, masks, "small-image", generator)
    assert moved_masks.shape == masks.shape and set(moved_masks.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}
    covered = moved_masks != IGNORE_INDEX
    agreement = (moved_pixels.argmax(1) == moved_masks)[covered].float().mean()
    assert agreement > 0.9 and not torch.equal(moved_masks, masks)  # the same view, not the original


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_fine_tuning_segments_the_bright_half_and_reports_its_budget(kind):
    from transformers import ResNetConfig, ResNetModel, ViTConfig, ViTModel

    from hf_ssl.eval.segmentation_finetune import finetune_segmentation

    torch.manual_seed(0)
    encoder = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64), add_pooling_layer=False) if kind == "vit" else \
        ResNetModel(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"))
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat(24)
    pixels = torch.randn(48, 3, 32, 32, generator=generator) * 0.1
    masks = torch.zeros(48, 32, 32, dtype=torch.long)
    pixels[labels == 0, :, :, :16] += 1.0
    masks[labels == 0, :, :16] = 1
    pixels[labels == 1, :, :, 16:] += 1.0
    masks[labels == 1, :, 16:] = 2
    metrics, model = finetune_segmentation(encoder, pixels[:32], masks[:32], labels[:32], pixels[32:], masks[32:],
                                           num_classes=3, max_steps=120, batch_size=8, learning_rate=3e-3,
                                           augmentation="none")
    assert metrics["mean_iou"] > 0.8 and metrics["validated"] and metrics["steps"] <= 120
    assert metrics["decoder_layers"] == 3  # both end on a 4x4 map (patch 8; stride 8): 4 -> 32 in three doublings
    assert model(pixels[:2]).logits.shape == (2, 3, 32, 32)


# ---------------------------------------------------------------- masks from data


def scenes_processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": 48, "width": 48}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def test_the_scenes_load_with_their_masks_and_the_digits_without():
    scenes = LabelledData.load(DataSelection("digit-scenes", max_samples=20), scenes_processor())
    assert scenes.train_masks.shape == (20, 48, 48) and scenes.test_masks.shape == (20, 48, 48)
    assert scenes.num_mask_classes <= 11
    assert torch.equal(scenes.train_masks.amax((1, 2)), scenes.train_labels + 1)  # each mask: its digit's class
    digits = LabelledData.load(DataSelection("digits", max_samples=20), scenes_processor())
    assert digits.train_masks is None
    with pytest.raises(ValueError, match="needs per-pixel masks: neither split has a column 'mask'"):
        digits.require_masks("segmentation_linear")


def test_masks_are_resized_with_the_images_and_refused_when_the_processor_crops():
    from transformers import ViTImageProcessor

    resized = LabelledData.load(DataSelection("digit-scenes", max_samples=4),
                                ViTImageProcessor(size={"height": 24, "width": 24}))
    assert resized.train_masks.shape == (4, 24, 24)
    assert set(resized.train_masks.unique().tolist()) <= set(range(11))
    from transformers import ConvNextImageProcessor

    cropping = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)  # resize then centre-crop
    cropped = LabelledData.load(DataSelection("digit-scenes", max_samples=4), cropping)
    assert cropped.train_masks is None and "crops" in cropped.missing_masks


def test_a_mask_column_that_is_not_class_indices_only_stops_segmentation(tmp_path):
    import datasets
    import numpy as np
    from PIL import Image

    images = [Image.fromarray(np.full((48, 48, 3), 40 * index, dtype=np.uint8)) for index in range(4)]
    rows = {"image": images, "label": [0, 1, 0, 1], "mask": images}  # an RGB "mask": a picture, not classes
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64"), "mask": datasets.Image()})
    datasets.DatasetDict({split: datasets.Dataset.from_dict(rows, features=features) for split in ("train", "test")}) \
        .save_to_disk(str(tmp_path / "data"))
    data = LabelledData.load(DataSelection(str(tmp_path / "data")), scenes_processor())
    assert data.train_pixels.shape == (4, 3, 48, 48) and data.train_masks is None  # classification still works
    with pytest.raises(ValueError, match="single-channel class-index images"):
        data.require_masks("segmentation_linear")


@pytest.mark.slow
def test_hf_ssl_evaluate_segments_a_run_folder_next_to_its_baselines(tmp_path):
    """The CLI as README shows it, on a saved run folder; and a dataset without masks exits 2 in one line."""
    from transformers import ViTConfig, ViTModel

    model = ViTModel(ViTConfig(image_size=48, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64), add_pooling_layer=False)
    model.save_pretrained(tmp_path)
    scenes_processor().save_pretrained(tmp_path)
    command = [str(Path(sys.executable).parent / "hf-ssl"), "evaluate", "--model", str(tmp_path), "--protocol",
               "segmentation_linear", "segmentation_finetune", "knn", "--max_samples", "60", "--baselines", "random_init",
               "raw_pixels", "supervised", "--segmentation_finetune_max_steps", "4", "--finetune_max_steps", "4", "--json"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=OFFLINE)
    assert completed.returncode == 0, completed.stderr[-2000:]
    import json

    results, _ = json.JSONDecoder().raw_decode(completed.stdout[completed.stdout.index("{"):])
    assert "model card:" in completed.stdout  # a folder with weights gets its card, segmentation included
    segmented = results["segmentation_linear"]
    assert segmented["metric"] == "mean_iou" and segmented["task_type"] == "image-segmentation"
    assert 0 <= segmented["mean_iou"] <= 1 and segmented["feature_grid"] == [6, 6]
    assert set(segmented["baselines"]) == {"random_init", "raw_pixels"}  # the supervised classifier is no mIoU
    assert set(results["knn"]["baselines"]) == {"random_init", "raw_pixels", "supervised"}
    tuned = results["segmentation_finetune"]  # from random init it is the supervised segmentation model
    assert tuned["steps"] == 4 and tuned["metric"] == "mean_iou"
    assert set(tuned["baselines"]) == {"random_init", "raw_pixels", "supervised"}
    assert tuned["baselines"]["random_init"] == tuned["baselines"]["supervised"] != results["knn"]["baselines"]["supervised"]
    from hf_ssl.eval.report import format_report

    table = format_report(results)  # what the command prints without --json
    assert "Linear segmentation (mean IoU)" in table and "Segmentation fine-tuning" in table and "Verdict" in table
    card = (tmp_path / "README.md").read_text()
    assert "Linear segmentation mean IoU" in card  # the model-index entry
    failed = subprocess.run([*command[:5], "segmentation_linear", "--dataset_name", "digits"], capture_output=True,
                            text=True, timeout=600, env=OFFLINE)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1].startswith("error: segmentation_linear needs per-pixel masks")
