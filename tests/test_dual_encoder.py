"""CLIP-style dual encoder: the papers' losses through the model, the logit scale, LiT locking,
captions and tokenizers, run folders that transformers' zero-shot pipeline loads, the zero-shot
and retrieval protocols, and a short training on the bundled captions."""

from __future__ import annotations

import datetime
import functools
import json
import math
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, AutoTokenizer, VisionTextDualEncoderProcessor, pipeline

import hf_ssl
from hf_ssl.backbones import default_image_processor, pooled_features
from hf_ssl.data import UndecodableImageError, collate_samples, load_default_dataset
from hf_ssl.eval.retrieval import caption_positives, retrieval_recall
from hf_ssl.eval.zero_shot import class_embeddings, embed_texts
from hf_ssl.modeling.dual_encoder import BackboneForDualEncoder, DualEncoderConfig
from hf_ssl.recipes import BuildContext, get_recipe, parameter_groups
from hf_ssl.modeling.dual_encoder.recipe import PLAIN_MODEL_FOLDER
from hf_ssl.text import ImageCaptionTransform, byte_level_tokenizer, caption_texts, train_caption_tokenizer
from hf_ssl.training import PretrainingArguments
from hf_ssl.training.outputs import save_run_folder
from hf_ssl.transforms import RowsByRole

IMAGE_SIZE = 32
RECIPE = get_recipe("dual_encoder")


@functools.cache
def bundled_rows(split: str = "train", count: int = 200) -> list[dict]:
    """The first `count` rows of a bundled split (built once: every row is a bicubic upsampling)."""
    return list(load_default_dataset(split).select(range(count)))


def tiny_context(**method_flags) -> BuildContext:
    arguments = RECIPE.arguments_class(text_model="text-micro", projection_dim=16, max_caption_length=16, **method_flags)
    return BuildContext(
        backbone=hf_ssl.resolve_backbone("vit-micro", IMAGE_SIZE),
        image_size=IMAGE_SIZE,
        method_arguments=arguments,
        columns=RECIPE.columns(PretrainingArguments(method="dual_encoder"), arguments),
    )


def tiny_model(seed: int = 0, **method_flags) -> tuple[BackboneForDualEncoder, BuildContext]:
    """A vit-micro + text-micro dual encoder with a tokenizer trained on the bundled captions."""
    context = tiny_context(**method_flags)
    RECIPE.prepare_inputs(context, ({"caption": row["caption"]} for row in bundled_rows()))
    torch.manual_seed(seed)
    return RECIPE.build_model(context), context


def bundled_batch(context: BuildContext, count: int = 6) -> dict[str, torch.Tensor]:
    transform = RowsByRole(context.columns, RECIPE.build_transform(context))
    samples = []
    for index, row in enumerate(bundled_rows()[:count]):
        torch.manual_seed(index)
        samples.append({**transform(row), "skipped_samples": 0})
    batch = collate_samples(samples)
    batch.pop("skipped_samples")
    return batch


def _numpy_features(model, batch):
    """I_f, T_f: the two towers' pooled features, before the projections (float64 numpy)."""
    with torch.no_grad():
        image_features = pooled_features(model.vision_model, batch["pixel_values"])
        text_features = model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
    return image_features.double().numpy(), text_features.double().numpy()


def _l2_normalize(x, axis):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def _cross_entropy_loss(logits, labels, axis):
    """Mean CE where `axis` is the class axis (the pseudocode's cross_entropy_loss)."""
    log_probabilities = logits - np.log(np.exp(logits).sum(axis=axis, keepdims=True))
    picked = log_probabilities[labels, np.arange(len(labels))] if axis == 0 else log_probabilities[np.arange(len(labels)), labels]
    return -picked.mean()


# ---------------------------------------------------------------- the losses through the model


def test_softmax_loss_is_the_clip_paper_pseudocode():
    model, context = tiny_model()
    batch = bundled_batch(context)
    model.eval()
    with torch.no_grad():
        loss = model(**batch).loss
    I_f, T_f = _numpy_features(model, batch)
    W_i = model.visual_projection.weight.detach().double().numpy().T  # [d_i, d_e]
    W_t = model.text_projection.weight.detach().double().numpy().T
    t = float(model.logit_scale.detach())
    # Figure 3 of arXiv:2103.00020, line by line.
    I_e = _l2_normalize(np.dot(I_f, W_i), axis=1)
    T_e = _l2_normalize(np.dot(T_f, W_t), axis=1)
    logits = np.dot(I_e, T_e.T) * np.exp(t)
    n = len(logits)
    labels = np.arange(n)
    loss_i = _cross_entropy_loss(logits, labels, axis=0)
    loss_t = _cross_entropy_loss(logits, labels, axis=1)
    expected = (loss_i + loss_t) / 2
    assert t == pytest.approx(math.log(1 / 0.07))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_sigmoid_loss_is_the_siglip_paper_algorithm():
    model, context = tiny_model(loss_type="sigmoid")
    batch = bundled_batch(context)
    model.eval()
    with torch.no_grad():
        output = model(**batch)
    I_f, T_f = _numpy_features(model, batch)
    t_prime, b = float(model.logit_scale.detach()), float(model.logit_bias.detach())
    assert (t_prime, b) == (pytest.approx(math.log(10)), pytest.approx(-10.0))
    # Algorithm 1 of arXiv:2303.15343.
    n = len(I_f)
    zimg = _l2_normalize(I_f @ model.visual_projection.weight.detach().double().numpy().T, axis=1)
    ztxt = _l2_normalize(T_f @ model.text_projection.weight.detach().double().numpy().T, axis=1)
    logits = np.dot(zimg, ztxt.T) * np.exp(t_prime) + b
    labels = 2 * np.eye(n) - np.ones(n)
    expected = -np.sum(-np.log1p(np.exp(-labels * logits))) / n
    assert float(output.loss) == pytest.approx(expected, rel=1e-5)
    # the scores the zero-shot pipeline reads include the bias (sigmoid(logit) is a probability)
    np.testing.assert_allclose(output.logits_per_image.numpy(), logits, rtol=1e-4, atol=1e-4)


def test_no_loss_for_unpaired_inputs_and_an_error_when_one_is_demanded():
    model, context = tiny_model()
    batch = bundled_batch(context, count=4)
    model.eval()
    with torch.no_grad():
        output = model(pixel_values=batch["pixel_values"][:1], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert output.loss is None and output.logits_per_image.shape == (1, 4)
        assert model(**batch, return_loss=False).loss is None
        with pytest.raises(ValueError, match="one text per image"):
            model(pixel_values=batch["pixel_values"][:1], input_ids=batch["input_ids"], return_loss=True)


def test_trailing_padding_is_cut_without_changing_the_text_features():
    model, context = tiny_model()
    model.eval()
    tokenizer = RECIPE.tokenizer(context)
    short = tokenizer(["a handwritten 3", "the number seven"], padding="longest", return_tensors="pt")
    padded = tokenizer(["a handwritten 3", "the number seven"], padding="max_length", max_length=24, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model.get_text_features(**padded).pooler_output, model.get_text_features(**short).pooler_output)


# ---------------------------------------------------------------- logit scale


def test_logit_scale_is_learned_and_clamped_at_100():
    model, context = tiny_model()
    batch = bundled_batch(context)
    model.train()
    model(**batch).loss.backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0
    optimizer = torch.optim.SGD([model.logit_scale], lr=1.0)
    before = float(model.logit_scale.detach())
    optimizer.step()
    assert float(model.logit_scale) != before  # learned

    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) ~ 22026
    model.zero_grad()
    output = model(**batch)
    assert float(output.logit_scale) == pytest.approx(100.0)
    cosine = output.image_embeds @ output.text_embeds.T
    torch.testing.assert_close(output.logits_per_image, 100.0 * cosine)
    output.loss.backward()
    assert float(model.logit_scale.grad) == 0.0  # above the clip the scale gets no gradient
    RECIPE.after_optimizer_step(model, None)  # open_clip: clamp the parameter after every step
    assert float(model.logit_scale) == pytest.approx(math.log(100.0))


def test_config_rejects_bad_objective_settings():
    with pytest.raises(ValueError, match="loss_type"):
        DualEncoderConfig(loss_type="triplet")
    with pytest.raises(ValueError, match="max_logit_scale"):
        DualEncoderConfig(logit_scale_init_value=math.log(500.0))
    with pytest.raises(ValueError, match="unlock_image_projection needs lock_image_tower"):
        DualEncoderConfig(unlock_image_projection=True)
    with pytest.raises(ValueError, match="sigmoid"):
        DualEncoderConfig(logit_bias_init_value=-5.0)


# ---------------------------------------------------------------- LiT locking


@pytest.mark.parametrize("unlock_projection", [False, True])
def test_locked_image_tower_gets_no_gradient(unlock_projection, tmp_path):
    model, context = tiny_model(lock_image_tower=True, unlock_image_projection=unlock_projection)
    batch = bundled_batch(context)
    tower_before = {name: value.clone() for name, value in model.vision_model.state_dict().items()}
    model.train()
    assert not model.vision_model.training  # dropout off, batch-norm statistics fixed
    model(**batch).loss.backward()
    assert all(parameter.grad is None for parameter in model.vision_model.parameters())
    assert (model.visual_projection.weight.grad is not None) == unlock_projection
    assert any(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in model.text_model.parameters())
    trained = {id(parameter) for group in parameter_groups(model, 0.2) for parameter in group["params"]}
    assert not trained & {id(parameter) for parameter in model.vision_model.parameters()}
    assert (id(model.visual_projection.weight) in trained) == unlock_projection
    torch.optim.AdamW([parameter for parameter in model.parameters() if parameter.requires_grad], lr=1e-2).step()
    for name, value in model.vision_model.state_dict().items():
        torch.testing.assert_close(value, tower_before[name])
    # the lock is part of the saved model
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert loaded.config.lock_image_tower and not any(parameter.requires_grad for parameter in loaded.vision_model.parameters())
    assert loaded.visual_projection.weight.requires_grad == unlock_projection


def test_unlocking_trains_everything_again():
    model, _ = tiny_model(lock_image_tower=True)
    model.set_image_tower_lock(False)
    model.train()
    assert model.vision_model.training and all(parameter.requires_grad for parameter in model.parameters())
    with pytest.raises(ValueError, match="needs lock=True"):
        model.set_image_tower_lock(False, unlock_projection=True)


# ---------------------------------------------------------------- captions and tokenizers


def test_caption_cells_of_every_shape():
    assert caption_texts("  a cat ") == ["a cat"]
    assert caption_texts(b"a dog") == ["a dog"]
    assert caption_texts(["a cat", "", None, ["two cats"]]) == ["a cat", "two cats"]
    assert caption_texts("") == caption_texts(None) == caption_texts(3) == []


def test_one_caption_of_a_list_is_drawn_per_sample_reproducibly():
    transform = ImageCaptionTransform(byte_level_tokenizer(), 16, IMAGE_SIZE, (0.5,) * 3, (0.5,) * 3)
    row = bundled_rows()[0]
    drawn = []
    for seed in range(12):
        torch.manual_seed(seed)
        sample = transform(row)
        assert sample["input_ids"].shape == sample["attention_mask"].shape == (16,)
        assert sample["pixel_values"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
        drawn.append(tuple(sample["input_ids"].tolist()))
    torch.manual_seed(3)
    assert tuple(transform(row)["input_ids"].tolist()) == drawn[3]
    assert len(set(drawn)) > 1  # several phrasings of the label are used


@pytest.mark.parametrize("caption", ["", "   ", [], [""], None])
def test_rows_without_caption_text_are_skipped(caption):
    transform = ImageCaptionTransform(byte_level_tokenizer(), 16, IMAGE_SIZE, (0.5,) * 3, (0.5,) * 3)
    row = {"image": bundled_rows()[0]["image"], "caption": caption}
    with pytest.raises(UndecodableImageError, match="caption"):
        transform(row)


def test_tokenizers_are_deterministic_and_byte_level_bpe_encodes_unseen_words():
    captions = [caption for row in bundled_rows()[:100] for caption in row["caption"]]
    first, second = train_caption_tokenizer(captions), train_caption_tokenizer(iter(captions))
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    unseen = first("a zebra")["input_ids"]
    assert first.unk_token_id not in unseen and first.decode(unseen, skip_special_tokens=True).strip() == "a zebra"
    assert unseen[0] == first.cls_token_id and unseen[-1] == first.sep_token_id
    word_level = train_caption_tokenizer(captions, kind="wordlevel")
    assert word_level.unk_token_id in word_level("a zebra")["input_ids"]
    assert word_level.convert_ids_to_tokens(word_level("The number SEVEN")["input_ids"]) == ["[CLS]", "the", "number", "seven", "[SEP]"]
    with pytest.raises(ValueError, match="kind"):
        train_caption_tokenizer(captions, kind="sentencepiece")


def test_a_local_text_model_folder_brings_its_weights_and_tokenizer(tmp_path):
    from transformers import BertConfig, BertModel

    tokenizer = train_caption_tokenizer(["a photo of a cat", "a photo of a dog"], kind="wordlevel")
    torch.manual_seed(5)
    text_model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=64))
    text_model.save_pretrained(tmp_path / "text")
    tokenizer.save_pretrained(tmp_path / "text")
    context = tiny_context()
    context.method_arguments.text_model = str(tmp_path / "text")
    RECIPE.prepare_inputs(context, [{"caption": "unused: the folder has its own tokenizer"}])
    model = RECIPE.build_model(context)
    assert RECIPE.tokenizer(context).get_vocab() == tokenizer.get_vocab()
    for name, value in text_model.state_dict().items():
        torch.testing.assert_close(model.text_model.state_dict()[name], value)
    # captions are padded to a fixed length: a tokenizer without a pad token is refused up front
    text_model.save_pretrained(tmp_path / "no-pad")
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "no-pad")
    context = tiny_context()
    context.method_arguments.text_model = str(tmp_path / "no-pad")
    with pytest.raises(ValueError, match="no padding token"):
        RECIPE.build_model(context)


# ---------------------------------------------------------------- run folders and the pipeline


def _run_folder(tmp_path, model, context):
    model.eval()
    save_run_folder(model, tmp_path, default_image_processor(IMAGE_SIZE), {"method": "dual_encoder"})
    RECIPE.save_extra_files(model, context, tmp_path)
    return tmp_path


def test_save_and_load_round_trip_with_tokenizer_and_processor(tmp_path):
    model, context = tiny_model()
    run_dir = _run_folder(tmp_path, model, context)
    loaded = AutoModel.from_pretrained(run_dir).eval()
    assert type(loaded) is BackboneForDualEncoder
    processor = AutoProcessor.from_pretrained(run_dir)
    assert isinstance(processor, VisionTextDualEncoderProcessor)
    texts = ["a handwritten 3", "the number seven"]
    assert AutoTokenizer.from_pretrained(run_dir)(texts)["input_ids"] == RECIPE.tokenizer(context)(texts)["input_ids"]
    images = [row["image"] for row in bundled_rows("test", 3)[:2]]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits_per_image, model(**inputs).logits_per_image)


def test_plain_transformers_form_computes_the_same_scores(tmp_path):
    model, context = tiny_model()
    run_dir = _run_folder(tmp_path, model, context)
    plain = AutoModel.from_pretrained(run_dir / PLAIN_MODEL_FOLDER).eval()
    assert type(plain).__name__ == "VisionTextDualEncoderModel"
    processor = AutoProcessor.from_pretrained(run_dir / PLAIN_MODEL_FOLDER)
    images = [row["image"] for row in bundled_rows("test", 3)]
    inputs = processor(text=["a photo of a 1.", "a photo of a 2."], images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs).logits_per_image, model(**inputs).logits_per_image, rtol=1e-4, atol=1e-4)


def test_a_swin_tower_has_a_plain_form_and_timm_or_convnext_towers_say_they_have_none():
    context = tiny_context()
    context.backbone = hf_ssl.resolve_backbone("swin-micro", IMAGE_SIZE)
    swin = RECIPE.build_model(context).eval()
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():  # Swin's parameter-free average pooler, which hf-ssl's tower lacks, is recomputed
        torch.testing.assert_close(swin.to_vision_text_dual_encoder().get_image_features(pixel_values).pooler_output,
                                   swin.get_image_features(pixel_values).pooler_output)
    context.backbone = hf_ssl.resolve_backbone("timm/resnet10t", IMAGE_SIZE)
    with pytest.raises(ValueError, match="timm"):
        RECIPE.build_model(context).to_vision_text_dual_encoder()
    from transformers import ConvNextConfig

    context.backbone = hf_ssl.BackboneSpec("convnext", "transformers", ConvNextConfig(num_stages=2, depths=[1, 1], hidden_sizes=[16, 32]).to_dict())
    convnext = RECIPE.build_model(context)
    assert torch.isfinite(convnext(**bundled_batch(context, count=2)).loss)
    with pytest.raises(ValueError, match="cannot hold a convnext tower"):
        convnext.to_vision_text_dual_encoder()


def test_zero_shot_pipeline_runs_on_the_run_folder(tmp_path):
    model, context = tiny_model()
    run_dir = _run_folder(tmp_path, model, context)
    classifier = pipeline("zero-shot-image-classification", model=str(run_dir))
    image = bundled_rows("test", 3)[0]["image"]
    result = classifier(image, candidate_labels=["3", "7", "nine"])
    assert sorted(entry["label"] for entry in result) == ["3", "7", "nine"]
    assert sum(entry["score"] for entry in result) == pytest.approx(1.0)


@pytest.mark.slow
def test_plain_folder_runs_the_pipeline_without_hf_ssl(tmp_path):
    model, context = tiny_model()
    run_dir = _run_folder(tmp_path, model, context)
    image_path = tmp_path / "digit.png"
    bundled_rows("test", 3)[0]["image"].save(image_path)
    reference = pipeline("zero-shot-image-classification", model=str(run_dir))(str(image_path), candidate_labels=["3", "7"])
    script = f"""
    import json, sys
    sys.modules['hf_ssl'] = None  # importing hf_ssl now raises ImportError
    from transformers import pipeline
    classifier = pipeline("zero-shot-image-classification", model={str(run_dir / PLAIN_MODEL_FOLDER)!r})
    print(json.dumps(classifier({str(image_path)!r}, candidate_labels=["3", "7"])))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    plain = json.loads(result.stdout.strip().splitlines()[-1])
    assert [entry["label"] for entry in plain] == [entry["label"] for entry in reference]
    assert [entry["score"] for entry in plain] == pytest.approx([entry["score"] for entry in reference], abs=1e-4)


# ---------------------------------------------------------------- zero-shot and retrieval


def test_prompt_ensembles_average_normalised_prompt_embeddings():
    model, context = tiny_model()
    model.eval()
    tokenizer = RECIPE.tokenizer(context)
    templates = ["a photo of a {}.", "a handwritten {}."]
    weights = class_embeddings(model, tokenizer, ["3", "7"], templates)
    prompts = embed_texts(model, tokenizer, ["a photo of a 3.", "a handwritten 3."])
    torch.testing.assert_close(weights[0], torch.nn.functional.normalize(prompts.mean(0), dim=0))
    with pytest.raises(ValueError, match="placeholder"):
        class_embeddings(model, tokenizer, ["3"], ["a photo"])


def test_retrieval_recall_by_hand():
    images = torch.eye(3)
    texts = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.2, 1.0, 0.0], [0.0, 1.0, 0.1]]), dim=1)
    # image 2 has one caption (text 2) that scores highest with image 1
    positives = torch.eye(3, dtype=torch.bool)
    recall = retrieval_recall(images, texts, positives, ks=(1, 2))
    assert recall["image_to_text_recall@1"] == pytest.approx(2 / 3)  # image 1 ranks text 2 above its own text 1
    assert recall["text_to_image_recall@1"] == pytest.approx(2 / 3)
    assert recall["text_to_image_recall@2"] == 1.0
    # a model mapping everything to one point retrieves nothing (ties count against the query)
    collapsed = retrieval_recall(torch.ones(3, 3) / 3**0.5, torch.ones(3, 3) / 3**0.5, positives, ks=(1,))
    assert collapsed == {"image_to_text_recall@1": 0.0, "text_to_image_recall@1": 0.0}


def test_duplicate_captions_are_one_text_correct_for_every_image_they_describe():
    texts, positives = caption_positives([["a 3", "three"], ["a 3"], ["a 7"]])
    assert texts == ["a 3", "three", "a 7"]
    assert positives.tolist() == [[True, True, False], [True, False, False], [False, False, True]]
    with pytest.raises(ValueError, match="no caption"):
        caption_positives([["a 3"], []])


def test_evaluate_cli_zero_shot_and_retrieval_write_results_and_card(tmp_path):
    from huggingface_hub import ModelCard

    from hf_ssl.cli import evaluate

    model, context = tiny_model()
    run_dir = _run_folder(tmp_path, model, context)
    (run_dir / "training_args.json").write_text(json.dumps({"method": "dual_encoder", "dataset_name": "digits"}))
    code = evaluate.main(["--model", str(run_dir), "--protocol", "zero_shot", "retrieval", "--max_samples", "40",
                          "--labels", *[str(digit) for digit in range(10)], "--templates", "a photo of a {}.", "a handwritten {}."])
    assert code == 0
    results = json.loads((run_dir / "eval_results.json").read_text())
    assert results["zero_shot"]["templates"] == ["a photo of a {}.", "a handwritten {}."]
    assert 0.0 <= results["zero_shot"]["accuracy"] <= results["zero_shot"]["top5_accuracy"] <= 1.0
    assert set(results["retrieval"]) >= {f"{direction}_recall@{k}" for direction in ("image_to_text", "text_to_image")
                                          for k in (1, 5, 10)}
    card = ModelCard.load(run_dir / "README.md")
    metric_names = [metric["name"] for entry in card.data.to_dict()["model-index"][0]["results"] for metric in entry["metrics"]]
    assert "Zero-shot top-1 accuracy" in metric_names and "Retrieval image to text recall@1" in metric_names
    assert "| Zero-shot |" in card.text
    # a plain encoder folder has no text tower: a clear error, exit code 2
    assert evaluate.main(["--model", str(run_dir / "backbone"), "--protocol", "zero_shot"]) == 2


def test_bad_text_model_is_a_one_line_error(capsys):
    from hf_ssl.cli import pretrain

    code = pretrain.main(["--method", "dual_encoder", "--text_model", "no-such-text-model", "--max_steps", "1"])
    assert code == 2
    assert "--text_model 'no-such-text-model'" in capsys.readouterr().err


# ---------------------------------------------------------------- two processes through the model

WORLD_SIZE, GLOBAL_BATCH = 2, 8


def _two_process_case(rows: slice, world_size: int, all_reduce=None) -> dict:
    model, context = tiny_model(seed=3)
    model = model.double().eval()  # eval: no dropout, so both runs see the same function
    batch = bundled_batch(context, count=GLOBAL_BATCH)
    batch = {key: value[rows] for key, value in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].double()
    loss = model(**batch).loss
    (loss / world_size).backward()  # DDP: sum of loss / W over processes
    gradients = {}
    for name, parameter in model.named_parameters():
        gradient = parameter.grad.clone() if parameter.grad is not None else torch.zeros_like(parameter)
        if all_reduce is not None:
            all_reduce(gradient)
        gradients[name] = gradient
    return {"loss": loss.detach(), "gradients": gradients}


def _two_process_worker(rank: int, world_size: int, store_path: str, result_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    try:
        per_process = GLOBAL_BATCH // world_size
        results = {loss_type: _two_process_case(slice(rank * per_process, (rank + 1) * per_process), world_size, dist.all_reduce)
                   for loss_type in ("softmax",)}
        torch.save(results, f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_global_batch_through_the_model(tmp_path):
    import torch.multiprocessing as mp

    # fork: the children inherit the imported modules (spawn would re-import transformers in each)
    processes = mp.start_processes(_two_process_worker, args=(WORLD_SIZE, str(tmp_path / "store"), str(tmp_path)),
                                   nprocs=WORLD_SIZE, join=False, start_method="fork")
    started = time.monotonic()
    finished = False
    while not finished and time.monotonic() - started < 300:
        finished = processes.join(timeout=1)
    if not finished:
        for process in processes.processes:
            process.kill()
        pytest.fail("the 2-process run did not finish within 300 s")
    per_rank = [torch.load(tmp_path / f"rank{rank}.pt")["softmax"] for rank in range(WORLD_SIZE)]
    single = _two_process_case(slice(None), world_size=1)
    torch.testing.assert_close(torch.stack([result["loss"] for result in per_rank]).mean(), single["loss"])
    for name, gradient in single["gradients"].items():
        for result in per_rank:
            torch.testing.assert_close(result["gradients"][name], gradient, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------- a user's own data and encoder


@pytest.mark.slow
def test_lit_run_on_a_users_parquet_captions_with_a_pretrained_image_encoder(tmp_path):
    """The user's flow: a pre-trained encoder folder + their image-caption parquet, LiT-locked."""
    import datasets
    from transformers import ViTModel

    from hf_ssl.cli import pretrain

    rows = bundled_rows()[:24]
    captions = [row["caption"][0] for row in rows]
    captions[5] = ""  # a bad sample: skipped and counted
    datasets.Dataset.from_dict(
        {"image": [row["image"] for row in rows], "text": captions},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    ).to_parquet(str(tmp_path / "captions.parquet"))
    torch.manual_seed(7)
    encoder = ViTModel(hf_ssl.resolve_backbone("vit-micro", IMAGE_SIZE).transformers_config(), add_pooling_layer=False)
    encoder.save_pretrained(tmp_path / "encoder")
    output_dir = tmp_path / "run"
    code = pretrain.main([
        "--method", "dual_encoder", "--model", str(tmp_path / "encoder"), "--image_size", str(IMAGE_SIZE),
        "--dataset_name", "parquet", "--data_files", str(tmp_path / "captions.parquet"), "--caption_column", "text",
        "--text_model", "text-micro", "--lock_image_tower", "--max_steps", "3", "--total_batch_size", "8",
        "--logging_steps", "1", "--dataloader_num_workers", "0", "--report_to", "none", "--output_dir", str(output_dir),
    ])
    assert code == 0
    trained = AutoModel.from_pretrained(output_dir)
    for name, value in encoder.state_dict().items():  # locked: the pre-trained encoder is untouched
        torch.testing.assert_close(trained.vision_model.state_dict()[name], value)
    arguments = json.loads((output_dir / "training_args.json").read_text())
    assert arguments["columns"] == {"image": "image", "caption": "text"} and arguments["skipped_samples"] >= 1
    tokenizer = AutoTokenizer.from_pretrained(output_dir)  # trained on the user's captions
    assert len(tokenizer) == trained.config.text_config.vocab_size > 261  # more than the 256 bytes + 5 specials
    classifier = pipeline("zero-shot-image-classification", model=str(output_dir))
    assert len(classifier(rows[0]["image"], candidate_labels=["3", "7"])) == 2


# ---------------------------------------------------------------- training on the bundled captions


TRAINING_STEPS = 300


@pytest.mark.slow
def test_short_training_on_bundled_captions_classifies_held_out_digits_zero_shot(tmp_path):
    from hf_ssl.cli import pretrain
    from hf_ssl.eval import evaluate_model

    output_dir = tmp_path / "run"
    code = pretrain.main(["--method", "dual_encoder", "--dataset_name", "digits", "--max_steps", str(TRAINING_STEPS), "--text_model", "text-micro",
                          "--output_dir", str(output_dir), "--report_to", "none", "--report_protocols", "none",
                          "--save_steps", "100000"])  # 1 worker: the training process then runs 1 thread, no spin-waits
    assert code == 0
    trained = evaluate_model(output_dir, protocols=("zero_shot",))["zero_shot"]  # on the digits it trained on
    untrained = evaluate_model(output_dir, protocols=("zero_shot",), random_init=True)["zero_shot"]
    assert trained["dataset"] == untrained["dataset"] == "hf-ssl bundled digits (scikit-learn)"
    print(f"zero-shot accuracy on the held-out digits: trained {trained['accuracy']:.3f}, "
          f"untrained {untrained['accuracy']:.3f}, chance 0.100")
    assert trained["accuracy"] > 0.25  # chance: 0.1 (10 classes); measured 0.345 (untrained 0.078)
    assert trained["accuracy"] > untrained["accuracy"] + 0.15
    classifier = pipeline("zero-shot-image-classification", model=str(output_dir))
    assert classifier(Image.new("RGB", (32, 32)), candidate_labels=["3", "7"])[0]["label"] in ("3", "7")


def test_remote_code_auto_map_names_the_zero_shot_class(tmp_path):
    """The pipeline loads a trust_remote_code folder through AutoModelForZeroShotImageClassification."""
    from hf_ssl.remote_code import add_remote_code

    model, context = tiny_model()
    run_dir = _run_folder(tmp_path, model, context)
    auto_map = add_remote_code(run_dir)
    assert auto_map["AutoModelForZeroShotImageClassification"].endswith(".BackboneForDualEncoder")
    assert json.loads((run_dir / "config.json").read_text())["auto_map"] == auto_map
