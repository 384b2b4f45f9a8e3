"""The registered segmentation model (`BackboneForSemanticSegmentation`) as users touch it: every
backbone kind, AutoModelForSemanticSegmentation, pipeline("image-segmentation") with and without
hf_ssl, the image + mask folder layout, and ``hf-ssl finetune --task segmentation`` as README shows it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hf_ssl.backbones import nested_backbone_config, segmentation_image_processor
from hf_ssl.data.segmentation import load_segmentation_splits
from hf_ssl.eval.data import IGNORE_INDEX
from hf_ssl.eval.segmentation_model import dominant_classes, validation_strata
from hf_ssl.modeling.segmentation import BackboneForSemanticSegmentation, SegmentationConfig

from remote_code_check import assert_remote_code_matches

HF_SSL = str(Path(sys.executable).parent / "hf-ssl")
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def tiny_encoder(kind: str) -> torch.nn.Module:
    from transformers import ResNetConfig, ResNetModel, SwinConfig, SwinModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    if kind == "vit":
        return ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64))  # with its pooler, as exported backbones are
    if kind == "resnet":
        return ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"))
    if kind == "swin":
        return SwinModel(SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4))
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    model.hf_ssl_model_args = {}
    return model


@pytest.mark.parametrize("kind", ["vit", "resnet", "swin", "timm"])
def test_every_backbone_kind_segments_saves_and_loads_through_the_auto_class(kind, tmp_path):
    from transformers import AutoModelForSemanticSegmentation

    encoder = tiny_encoder(kind)
    model = BackboneForSemanticSegmentation.from_backbone(encoder, num_labels=3, num_decoder_layers=2).eval()
    rebuilt = model.backbone.state_dict()
    assert all(torch.equal(tensor, encoder.state_dict()[name]) for name, tensor in rebuilt.items())  # weights copied
    pixels = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[0, :4] = IGNORE_INDEX
    output = model(pixels, labels=labels)
    assert output.logits.shape == (2, 3, 32, 32)
    keep = labels != IGNORE_INDEX
    by_hand = F.cross_entropy(output.logits.permute(0, 2, 3, 1)[keep], labels[keep])
    assert output.loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert type(loaded) is BackboneForSemanticSegmentation
    with torch.no_grad():
        assert torch.allclose(loaded(pixels).logits, model(pixels).logits, atol=1e-5)


def test_the_config_names_a_bad_field_and_the_nested_config_rebuilds_timm():
    with pytest.raises(ValueError, match="decoder_layers must be an int from 0 to 4"):
        SegmentationConfig(backbone_config={"source": "transformers", "model_type": "vit"}, decoder_layers=7)
    assert nested_backbone_config(tiny_encoder("timm")) == {"source": "timm", "architecture": "resnet18", "model_args": {}}


def saved_segmenter(folder: Path) -> BackboneForSemanticSegmentation:
    model = BackboneForSemanticSegmentation.from_backbone(tiny_encoder("vit"), num_labels=3, num_decoder_layers=2,
                                                          id2label={0: "background", 1: "left", 2: "right"}).eval()
    model.save_pretrained(folder)
    segmentation_image_processor(image_size=32).save_pretrained(folder)
    return model


def test_the_pipeline_runs_the_registered_model_and_reports_each_class_present(tmp_path, caplog):
    from transformers import pipeline

    saved_segmenter(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    segments = pipeline("image-segmentation", model=str(tmp_path))(image)
    assert segments and {segment["label"] for segment in segments} <= {"background", "left", "right"}
    assert all(segment["mask"].size == (56, 40) for segment in segments)  # the input's size
    covered = sum(np.asarray(segment["mask"]) > 0 for segment in segments)
    assert (covered == 1).all()  # every pixel in exactly one class's mask
    assert "is not supported" not in caplog.text


PIPELINE_CHILD = textwrap.dedent('''
    import json, sys
    sys.modules["hf_ssl"] = None  # `import hf_ssl` raises ImportError from here on
    import numpy as np
    from PIL import Image
    from transformers import pipeline
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    segments = pipeline("image-segmentation", model=sys.argv[1], trust_remote_code=True)(image)
    print(json.dumps({segment["label"]: np.asarray(segment["mask"]).tolist() for segment in segments}))
''')


@pytest.mark.slow
def test_the_saved_model_loads_and_segments_where_hf_ssl_cannot_be_imported(tmp_path):
    from transformers import pipeline

    from hf_ssl.hub import add_remote_code

    model = saved_segmenter(tmp_path / "model")
    assert assert_remote_code_matches(model, {"pixel_values": torch.randn(2, 3, 32, 32)}, tmp_path / "copy")
    add_remote_code(tmp_path / "model")
    auto_map = json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSemanticSegmentation"] == "modeling_segmentation.BackboneForSemanticSegmentation"
    environment = {key: value for key, value in OFFLINE.items() if not key.startswith("HF_HOME")}
    environment["HF_HOME"] = str(tmp_path / "hf-home")
    completed = subprocess.run([sys.executable, "-c", PIPELINE_CHILD, str(tmp_path / "model")], capture_output=True,
                               text=True, timeout=300, env=environment)
    assert completed.returncode == 0, completed.stderr[-2000:]
    remote = json.loads(completed.stdout.strip().splitlines()[-1])
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    local = {segment["label"]: np.asarray(segment["mask"]).tolist() for segment in
             pipeline("image-segmentation", model=str(tmp_path / "model"))(image)}
    assert remote == local


# ---------------------------------------------------------------- data


def write_image_mask_folder(folder: Path, count: int, side: int = 32, missing_mask: str | None = None) -> None:
    """`count` images whose left (class 1) or right (class 2) half is bright, with their masks."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for index in range(count):
        image = rng.integers(0, 60, (side, side, 3), dtype=np.uint8)
        mask = np.zeros((side, side), dtype=np.uint8)
        half = slice(0, side // 2) if index % 2 == 0 else slice(side // 2, side)
        image[:, half] += 150
        mask[:, half] = 1 + index % 2
        mask[0, 0] = IGNORE_INDEX
        Image.fromarray(image).save(folder / "images" / f"{index:03d}.jpg")
        if f"{index:03d}" != missing_mask:
            Image.fromarray(mask, mode="L").save(folder / "masks" / f"{index:03d}.png")
    (folder / "classes.txt").write_text("background\nleft\nright\n")


def test_an_image_mask_folder_loads_with_a_held_out_fifth_and_its_class_names(tmp_path):
    write_image_mask_folder(tmp_path / "data", 20)
    splits = load_segmentation_splits(str(tmp_path / "data"))
    assert (len(splits.train), len(splits.test)) == (16, 4) and splits.held_out
    assert splits.class_names == ("background", "left", "right")
    mask = np.asarray(splits.train[0]["mask"])
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2, IGNORE_INDEX}
    write_image_mask_folder(tmp_path / "bad", 4, missing_mask="002")
    with pytest.raises(ValueError, match=r"1 of 4 images .* have no mask .*\(first: 002.jpg; its mask would be 002.png\)"):
        load_segmentation_splits(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="the bundled 'digits' have no masks"):
        load_segmentation_splits("digits")


def test_the_validation_split_is_stratified_by_each_masks_most_frequent_class():
    masks = torch.tensor([[[0, 2], [2, 1]], [[0, 0], [0, IGNORE_INDEX]], [[3, 3], [1, 0]], [[2, 0], [0, 0]]])
    assert dominant_classes(masks, num_classes=4).tolist() == [2, 0, 3, 2]
    # class 0 and class 3 dominate one image each: merged into class 2's stratum, so a split exists
    assert validation_strata(masks, num_classes=4).tolist() == [2, 2, 2, 2]


# ---------------------------------------------------------------- the command


def tiny_backbone_folder(folder: Path) -> Path:
    from transformers import ViTImageProcessor

    tiny_encoder("vit").save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return folder


def test_from_random_init_the_command_trains_as_the_protocols_train_their_supervised_baseline(tmp_path):
    from hf_ssl.cli.finetune import default_output_dir, parse_arguments

    model = tiny_backbone_folder(tmp_path / "encoder")
    common = ["--task", "segmentation", "--model", str(model), "--output_dir", str(tmp_path / "out")]
    assert parse_arguments(common).settings.layer_decay == 0.75
    assert parse_arguments([*common, "--random_init"]).settings.layer_decay is None  # no layer-wise decay
    assert parse_arguments([*common, "--random_init", "--layer_decay", "0.5"]).settings.layer_decay == 0.5
    (model / "backbone").mkdir()  # a run folder's exported encoder: the output goes beside the run folder
    assert default_output_dir(str(model / "backbone"), False) == tmp_path / "encoder-segmentation"
    assert default_output_dir("org/splitmask-vit-s", True) == Path("splitmask-vit-s-random-init-segmentation")


@pytest.mark.slow
def test_hf_ssl_finetune_trains_a_segmentation_model_that_the_pipeline_loads(tmp_path):
    """The command as README shows it, on a folder of images + masks; bad input exits 2 in one line."""
    from transformers import pipeline

    write_image_mask_folder(tmp_path / "data", 60)
    model = tiny_backbone_folder(tmp_path / "encoder")
    command = [HF_SSL, "finetune", "--task", "segmentation", "--model", str(model), "--data", str(tmp_path / "data"),
               "--output_dir", str(tmp_path / "out"), "--finetune_max_steps", "150", "--finetune_learning_rate", "3e-3",
               "--finetune_batch_size", "8", "--finetune_augmentation", "none"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=OFFLINE)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "48 train / 12 test images (test: a seeded fifth held out)" in completed.stdout
    trained, validating = map(int, re.search(r"up to 150 steps \((\d+) images; (\d+) validate\)", completed.stdout).groups())
    assert trained + validating == 48 and 8 <= validating <= 12  # a stratified fifth validates
    result = json.loads((tmp_path / "out" / "eval_results.json").read_text())["segmentation_finetune-all"]
    assert result["mean_iou"] > 0.8 and set(result["class_iou"]) == {"background", "left", "right"}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card and "type: mean_iou" in card and "| left |" in card
    assert (tmp_path / "out" / "predictions.png").stat().st_size > 1000
    image = Image.open(tmp_path / "data" / "images" / "000.jpg")
    segments = pipeline("image-segmentation", model=str(tmp_path / "out"))(image)
    left = next(np.asarray(segment["mask"]) for segment in segments if segment["label"] == "left")
    assert left[:, :16].mean() > 200 and left[:, 16:].mean() < 50  # the bright left half is class "left"

    for arguments, message in (
        (["--task", "classification"], "error: argument --task: invalid choice"),
        (["--data", "digits", "--overwrite_output_dir"], "error: the bundled 'digits' have no masks"),
        (["--data", str(tmp_path / "nowhere")], "error: --data"),
        ([], "error: --output_dir"),  # the output folder is not empty
    ):
        failed = subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=600, env=OFFLINE)
        assert failed.returncode == 2, (arguments, failed.stderr[-1000:])
        assert failed.stderr.strip().splitlines()[-1].startswith(message), failed.stderr[-1000:]
        assert "Traceback" not in failed.stderr


@pytest.mark.slow
def test_a_signal_stops_fine_tuning_and_the_best_model_so_far_is_saved(tmp_path):
    write_image_mask_folder(tmp_path / "data", 40)
    model = tiny_backbone_folder(tmp_path / "encoder")
    command = [HF_SSL, "finetune", "--task", "segmentation", "--model", str(model), "--data", str(tmp_path / "data"),
               "--output_dir", str(tmp_path / "out"), "--finetune_max_steps", "100000", "--finetune_batch_size", "4",
               "--finetune_patience", "0", "--no_figure"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=OFFLINE)
    try:
        deadline, stderr = time.monotonic() + 300, b""
        while b"fine-tuning:" not in stderr and time.monotonic() < deadline and process.poll() is None:
            stderr += os.read(process.stderr.fileno(), 4096)  # blocks until the child writes
        time.sleep(2)  # some steps, and a validation check or more
        process.send_signal(signal.SIGTERM)
        stdout, rest = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr, stdout = (stderr + rest).decode(errors="replace"), stdout.decode(errors="replace")
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "SIGTERM received: stopping after this step" in stderr
    result = json.loads((tmp_path / "out" / "eval_results.json").read_text())["segmentation_finetune-all"]
    assert result["stopped_early"] and 0 < result["steps"] < 100000
    assert "stopped by SIGTERM at step" in stdout and (tmp_path / "out" / "model.safetensors").is_file()
