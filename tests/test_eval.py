"""Evaluation protocols: feature pooling, kNN (DINO protocol), metrics, linear probe, fine-tuning."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import SwinConfig, SwinModel, ViTConfig, ViTModel

from hf_ssl.eval import TopKAccuracy, classification_metrics, extract_features, knn_class_scores, knn_classify


def tiny_vit() -> ViTModel:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    return ViTModel(config, add_pooling_layer=False)


def tiny_swin() -> SwinModel:
    torch.manual_seed(0)
    config = SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)
    return SwinModel(config)


# ---------------------------------------------------------------- features


def test_extract_features_vit_mean_leaves_out_cls_and_cls_takes_first_token():
    model = tiny_vit()
    model.train()
    pixels = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        hidden = model(pixel_values=pixels).last_hidden_state  # (5, 1 + 16, 32)
        model.train()
    assert hidden.shape == (5, 17, 32)
    mean_features = extract_features(model, pixels, batch_size=2, pooling="mean")
    cls_features = extract_features(model, pixels, batch_size=3, pooling="cls")
    assert mean_features.dtype == torch.float32 and mean_features.device.type == "cpu"
    torch.testing.assert_close(mean_features, hidden[:, 1:].mean(1))
    torch.testing.assert_close(cls_features, hidden[:, 0])
    assert model.training, "extract_features must restore the caller's train/eval mode"


def test_extract_features_swin_has_no_cls_and_accepts_iterables():
    model = tiny_swin().eval()
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        hidden = model(pixel_values=pixels).last_hidden_state  # (4, 16, 32): no CLS
    from_tensor = extract_features(model, pixels)
    from_batches = extract_features(model, [pixels[:1], {"pixel_values": pixels[1:3]}, pixels[3]])
    torch.testing.assert_close(from_tensor, hidden.mean(1))
    torch.testing.assert_close(from_batches, from_tensor)
    with pytest.raises(ValueError, match="cls"):
        extract_features(model, pixels, pooling="cls")
    with pytest.raises(ValueError, match="pooling"):
        extract_features(model, pixels, pooling="max")


# ---------------------------------------------------------------- kNN


TRAIN = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])  # unit: [1,0], [0,1], [.7071,.7071]
TRAIN_LABELS = torch.tensor([0, 1, 1])


def test_knn_votes_hand_computed():
    query = torch.tensor([[5.0, 0.0]])  # cosine similarities to TRAIN: 1, 0, 1/sqrt(2)
    # k=2, T=1: neighbours 0 (sim 1, class 0) and 2 (sim .7071, class 1).
    scores = knn_class_scores(TRAIN, TRAIN_LABELS, query, k=2, temperature=1.0)
    torch.testing.assert_close(scores, torch.tensor([[math.e, math.exp(1 / math.sqrt(2))]]))
    # k=3, T=1: class 1 also gets exp(0) = 1 and wins (2.028 + 1 > 2.718).
    scores = knn_class_scores(TRAIN, TRAIN_LABELS, query, k=3, temperature=1.0)
    torch.testing.assert_close(scores, torch.tensor([[math.e, math.exp(1 / math.sqrt(2)) + 1.0]]))
    assert knn_classify(TRAIN, TRAIN_LABELS, query, torch.tensor([1]), k=3, temperature=1.0)["accuracy"] == 1.0
    # k=3, T=0.1: the closest neighbour dominates: exp(10) > exp(7.07) + exp(0).
    result = knn_classify(TRAIN, TRAIN_LABELS, query, torch.tensor([1]), k=3, temperature=0.1)
    assert result == {"accuracy": 0.0}  # 2 classes: no top-5


def test_knn_chunks_agree_and_num_classes_pads():
    torch.manual_seed(0)
    train, test = torch.randn(50, 8), torch.randn(13, 8)
    labels = torch.randint(0, 4, (50,))
    whole = knn_class_scores(train, labels, test, k=5, num_classes=7, chunk_size=100)
    chunked = knn_class_scores(train, labels, test, k=5, num_classes=7, chunk_size=4)
    assert whole.shape == (13, 7)
    torch.testing.assert_close(whole, chunked)
    assert torch.all(whole[:, 4:] == 0)


def test_knn_separable_features_exact_accuracy():
    # 3 classes on orthogonal axes with small noise; the test set has 2 mislabelled points.
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(3) * 10
    train_labels = torch.arange(3).repeat_interleave(20)
    test_labels = torch.arange(3).repeat_interleave(10)
    train = centres[train_labels] + torch.randn(60, 3, generator=generator) * 0.5
    test = centres[test_labels] + torch.randn(30, 3, generator=generator) * 0.5
    assert knn_classify(train, train_labels, test, test_labels) == {"accuracy": 1.0}  # 3 classes: no top-5
    wrong = test_labels.clone()
    wrong[0], wrong[15] = 1, 2
    result = knn_classify(train, train_labels, test, wrong, k=20, temperature=0.07)
    assert result["accuracy"] == pytest.approx(28 / 30)


def test_knn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        knn_classify(TRAIN, TRAIN_LABELS, TRAIN, TRAIN_LABELS, k=0)
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(TRAIN, TRAIN_LABELS, TRAIN, TRAIN_LABELS, temperature=0.0)
    with pytest.raises(ValueError, match="same D"):
        knn_classify(TRAIN, TRAIN_LABELS, torch.zeros(1, 3), torch.tensor([0]))


# ---------------------------------------------------------------- metrics


def test_top_k_accuracy_hand_computed():
    scores = torch.tensor(
        [
            [0.1, 0.5, 0.2, 0.0, 0.0, 0.0, 0.0],  # label 1: top-1 hit
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],  # label 4: 5th best -> top-5 hit only
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],  # label 6: miss
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # ties resolve to class 0: hit
        ]
    )
    labels = torch.tensor([1, 4, 6, 0])
    assert classification_metrics(scores, labels) == {"accuracy": 0.5, "top5_accuracy": 0.75}
    metric = TopKAccuracy(keep_in_memory=True)
    metric.add_batch(predictions=scores[:2].numpy(), references=labels[:2].numpy())
    metric.add_batch(predictions=scores[2:].numpy(), references=labels[2:].numpy())
    assert metric.compute(top_k=2) == {"accuracy": 0.5, "top2_accuracy": 0.5}


def test_top_k_accuracy_is_reported_only_with_more_than_k_classes():
    """With C <= k classes every example is a top-k hit: a 1.00 that says nothing."""
    labels = torch.tensor([0, 1, 2, 3])
    four_classes = torch.eye(4).flip(0)  # every top-1 wrong
    assert classification_metrics(four_classes, labels) == {"accuracy": 0.0}
    assert classification_metrics(four_classes, labels, top_k=3) == {"accuracy": 0.0, "top3_accuracy": 0.75}
    six_classes = torch.cat([four_classes, torch.zeros(4, 2)], dim=1)
    assert classification_metrics(six_classes, labels) == {"accuracy": 0.0, "top5_accuracy": 1.0}


# ---------------------------------------------------------------- linear probe, low labels, fine-tuning

from hf_ssl.eval import cached_features, finetune, linear_probe, low_label_indices, parse_label_setting  # noqa: E402
from hf_ssl.eval.finetune import BackboneClassifier, block_index, parameter_groups  # noqa: E402


def separable_features(noise: float = 0.3, seed: int = 0):
    """4 classes around the corners of a square in 2-D, embedded in 6-D with distractor dims."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 4.0], [-4.0, 4.0], [-4.0, -4.0], [4.0, -4.0]])
    train_labels = torch.arange(4).repeat(25)
    test_labels = torch.arange(4).repeat(10)

    def make(labels):
        signal = centres[labels] + noise * torch.randn(len(labels), 2, generator=generator)
        return torch.cat([signal, 0.1 * torch.randn(len(labels), 4, generator=generator)], dim=1)

    return make(train_labels), train_labels, make(test_labels), test_labels


def test_linear_probe_separable_features_exact_accuracy():
    train, train_labels, test, test_labels = separable_features()
    result = linear_probe(train, train_labels, test, test_labels)
    assert result["accuracy"] == 1.0 and "top5_accuracy" not in result  # 4 classes: no top-5
    # 5 test labels swapped to the opposite corner: exactly those 5 of 40 are wrong
    wrong = test_labels.clone()
    wrong[:5] = (wrong[:5] + 2) % 4
    assert linear_probe(train, train_labels, test, wrong)["accuracy"] == pytest.approx(35 / 40)


def test_low_label_indices_hand_counted():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    ten_percent = low_label_indices(labels, label_fraction=0.1)
    assert torch.bincount(labels[ten_percent]).tolist() == [5, 3, 2]
    one_percent = low_label_indices(labels, label_fraction=0.01)
    assert torch.bincount(labels[one_percent]).tolist() == [1, 1, 1]  # at least one per class
    one_each = low_label_indices(labels, labels_per_class=1, seed=3)
    assert torch.bincount(labels[one_each]).tolist() == [1, 1, 1]
    assert torch.equal(one_each, low_label_indices(labels, labels_per_class=1, seed=3))
    assert not torch.equal(low_label_indices(labels, labels_per_class=5, seed=0), low_label_indices(labels, labels_per_class=5, seed=1))
    assert parse_label_setting("10%") == {"label_fraction": 0.1}
    assert parse_label_setting("1-per-class") == {"labels_per_class": 1}
    assert parse_label_setting("all") == {}
    with pytest.raises(ValueError, match="label setting"):
        parse_label_setting("half")
    with pytest.raises(ValueError, match="exactly one"):
        low_label_indices(labels)


def test_layer_decay_groups_vit_and_swin():
    vit = tiny_vit()  # 1 block: embeddings depth 0, block depth 1, final norm + head depth 2
    assert block_index("embeddings.cls_token", vit.config) == 0
    assert block_index("layers.0.mlp.fc1.weight", vit.config) == 1
    assert block_index("layernorm.weight", vit.config) == 2
    groups = parameter_groups(BackboneClassifier(vit, 3), learning_rate=1.0, weight_decay=0.05, layer_decay=0.5)
    rates = {group["lr"] for group in groups}
    assert rates == {0.25, 0.5, 1.0}
    assert all(group["weight_decay"] == 0.0 for group in groups if all(p.ndim < 2 for p in group["params"]))
    swin = tiny_swin()  # depths [1, 1]: stage-1 block depth 1, its downsample closes stage 1, stage-2 block 2
    assert block_index("encoder.layers.0.blocks.0.attention.self.query.weight", swin.config) == 1
    assert block_index("encoder.layers.0.downsample.reduction.weight", swin.config) == 1
    assert block_index("encoder.layers.1.blocks.0.output.dense.weight", swin.config) == 2
    assert block_index("layernorm.weight", swin.config) == 3


def test_finetune_learns_and_leaves_the_backbone_untouched():
    torch.manual_seed(0)
    backbone = tiny_vit()
    before = {name: tensor.clone() for name, tensor in backbone.state_dict().items()}
    # class = which image half is bright: learnable in a few epochs
    labels = torch.arange(2).repeat(24)
    pixels = torch.randn(48, 3, 32, 32) * 0.1
    pixels[labels == 0, :, :16] += 1.0
    pixels[labels == 1, :, 16:] += 1.0
    metrics, model = finetune(backbone, pixels[:32], labels[:32], pixels[32:], labels[32:], epochs=8, batch_size=8,
                              learning_rate=3e-3, layer_decay=0.75)
    assert metrics["accuracy"] == 1.0
    assert isinstance(model, BackboneClassifier)
    assert all(torch.equal(before[name], tensor) for name, tensor in backbone.state_dict().items())


def test_feature_cache_reuses_and_invalidates(tmp_path):
    model = tiny_vit()
    pixels = torch.randn(3, 3, 32, 32)
    cache = tmp_path / "train.safetensors"
    first = cached_features(model, pixels, cache, data_key="digits|train")
    stamp = cache.stat().st_mtime_ns
    again = cached_features(model, torch.zeros(3, 3, 32, 32), cache, data_key="digits|train")  # same key: cached
    torch.testing.assert_close(again, first)
    assert cache.stat().st_mtime_ns == stamp
    with torch.no_grad():
        model.layernorm.bias.add_(1.0)  # new weights: recomputed
    changed = cached_features(model, pixels, cache, data_key="digits|train")
    torch.testing.assert_close(changed, first + 1.0)


# ---------------------------------------------------------------- end to end on the bundled data


@pytest.mark.slow
def test_pretrained_mae_beats_random_init_on_bundled_digits(tmp_path):
    """~200 MAE steps on the bundled digits (~10 s), then trainers/evaluate.py vs a random-init encoder."""
    import json
    import subprocess
    import sys
    import time
    from pathlib import Path

    from hf_ssl.data import load_default_dataset
    from hf_ssl.eval import evaluate_model
    from hf_ssl.modeling.mae import MAEConfig, ViTForMAE
    from run_folders import image_processor, write_run_folder

    torch.manual_seed(0)
    processor = image_processor(32)
    images = [image.convert("RGB") for image in load_default_dataset("train")["image"]]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]  # (1437, 3, 32, 32)
    model = ViTForMAE(MAEConfig(
        image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        decoder_hidden_size=64, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=128,
    ))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    generator = torch.Generator().manual_seed(0)
    losses = []
    model.train()
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster on a shared 2-core machine
    for _ in range(200):
        batch = pixels[torch.randint(0, len(pixels), (64,), generator=generator)]
        loss = model(pixel_values=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) < sum(losses[:20])
    torch.set_num_threads(threads)
    print(f"training: {time.perf_counter() - started:.1f}s")
    run_dir = write_run_folder(tmp_path / "mae-micro", model, losses, method="mae", dataset_name="digits")
    started = time.perf_counter()

    script = Path(__file__).resolve().parents[1] / "trainers" / "evaluate.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--model", str(run_dir), "--protocol", "knn", "linear",
         "--label_settings", "all", "10%", "--baselines", "random_init", "raw_pixels"],
        capture_output=True, text=True, timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    print(f"evaluate.py: {time.perf_counter() - started:.1f}s")
    pretrained = json.loads((run_dir / "eval_results.json").read_text())
    assert set(pretrained) == {"knn", "linear", "knn-10%", "linear-10%"}
    class_counts = torch.bincount(torch.as_tensor(load_default_dataset("train")["label"]))
    assert pretrained["linear-10%"]["num_labelled"] == sum(int(n * 0.1 + 0.5) for n in class_counts.tolist())
    assert (run_dir / "eval_cache" / "train-mean.safetensors").is_file()
    random = evaluate_model(run_dir, ["knn", "linear"], random_init=True)
    print({key: round(value["accuracy"], 3) for key, value in pretrained.items()},
          {key: round(value["accuracy"], 3) for key, value in random.items()})
    assert pretrained["knn"]["accuracy"] > random["knn"]["accuracy"] + 0.05
    assert pretrained["linear"]["accuracy"] > random["linear"]["accuracy"] + 0.05
    # the baselines stored with each result are the same protocol on the random-init encoder ...
    assert pretrained["knn"]["baselines"]["random_init"] == pytest.approx(random["knn"]["accuracy"])
    # ... and on the centred raw pixels of the same preprocessed images
    from hf_ssl.eval.baselines import raw_pixel_knn
    from hf_ssl.eval.data import preprocess

    train_pixels, train_labels = preprocess(load_default_dataset("train"), processor)
    test_pixels, test_labels = preprocess(load_default_dataset("test"), processor)
    raw = raw_pixel_knn(train_pixels, train_labels, test_pixels, test_labels)["accuracy"]
    assert pretrained["knn"]["baselines"]["raw_pixels"] == pytest.approx(raw)
    # the evaluation refreshed the card: measured results in the model-index, MAE reconstructions drawn
    from huggingface_hub import ModelCard

    card = ModelCard.load(run_dir / "README.md")
    values = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert values["k-NN top-1 accuracy"] == round(pretrained["knn"]["accuracy"], 4)
    assert (run_dir / "reconstruction.png").read_bytes()[:4] == b"\x89PNG"
    assert "reconstruction.png" in card.text


def test_the_name_training_runs_record_for_bundled_data_is_recognised():
    from hf_ssl.data.default import DEFAULT_DATASET_NAME, SCENES_DATASET_NAME
    from hf_ssl.eval.data import dataset_label, is_bundled_dataset

    assert is_bundled_dataset(DEFAULT_DATASET_NAME) and is_bundled_dataset(None) and is_bundled_dataset(SCENES_DATASET_NAME)
    assert not is_bundled_dataset("my-org/labelled")
    assert "scenes" in dataset_label(SCENES_DATASET_NAME) and dataset_label("my-org/labelled") == "my-org/labelled"


def test_every_result_carries_its_three_baselines(tmp_path):
    """Same protocol, labels and split for the encoder and its baselines; supervised = fine-tuned from random init."""
    from hf_ssl.eval import evaluate_model
    from hf_ssl.eval.data import DataSelection
    from hf_ssl.eval.finetune import FinetuneSettings
    from hf_ssl.eval.report import format_report
    from run_folders import image_processor

    vit = tiny_vit()
    vit.save_pretrained(tmp_path)
    image_processor(32).save_pretrained(tmp_path)
    results = evaluate_model(tmp_path, ["knn", "linear", "finetune"], data=DataSelection(max_samples=60),
                             settings={"finetune": FinetuneSettings(max_steps=4)},
                             baselines=("random_init", "raw_pixels", "supervised"))
    for protocol in ("knn", "linear", "finetune"):
        assert set(results[protocol]["baselines"]) == {"random_init", "raw_pixels", "supervised"}
    # fine-tuning's random-init baseline IS the supervised model; its raw-pixel counterpart is the
    # head alone on the pixels, i.e. the linear probe's raw-pixel baseline
    assert results["finetune"]["baselines"]["random_init"] == results["finetune"]["baselines"]["supervised"]
    assert results["knn"]["baselines"]["supervised"] == results["finetune"]["baselines"]["supervised"]
    assert results["finetune"]["baselines"]["raw_pixels"] == results["linear"]["baselines"]["raw_pixels"]
    text = format_report(results)
    header = next(line.split() for line in text.splitlines() if line.strip().startswith("protocol"))
    assert header == ["protocol", "labels", "pre-trained", "random", "init", "raw", "pixels", "supervised"]  # once each
    knn_row = next(line for line in text.splitlines() if line.strip().startswith("k-NN"))
    assert len(knn_row.split()[-4:]) == 4 and f"{results['knn']['baselines']['supervised']:.4f}" == knn_row.split()[-1]
    with pytest.raises(ValueError, match="baselines must be among"):
        evaluate_model(tmp_path, ["knn"], baselines=("imagenet",))


def test_the_verdict_says_which_label_free_baselines_the_encoder_does_not_beat():
    from hf_ssl.eval.report import verdict

    results = {"knn": {"dataset": "d", "split": "test", "k": 20, "accuracy": 0.6, "label_setting": "all",
                       "baselines": {"random_init": 0.5, "raw_pixels": 0.9, "supervised": 0.95}}}
    assert verdict(results) == "Verdict: the pre-trained encoder does NOT beat raw pixels on k-NN (0.6000 vs 0.9000)."
    results["knn"]["baselines"]["raw_pixels"] = 0.55  # supervised stays above: it is a reference, not a bar
    assert verdict(results) == "Verdict: the pre-trained encoder beats random init, raw pixels on every protocol (k-NN)."
    results["linear-10%"] = {"accuracy": 0.7, "label_setting": "10%",
                             "baselines": {"random_init": 0.2, "pretrained:org/imagenet-vit": 0.8}}
    assert verdict(results).endswith("does NOT beat org/imagenet-vit on Linear probe (10% labels) (0.7000 vs 0.8000).")
    only_supervised = {"knn": {"accuracy": 0.6, "baselines": {"supervised": 0.95}}}
    assert verdict(only_supervised).startswith("No verdict: none of the baselines a label-free encoder must beat")
