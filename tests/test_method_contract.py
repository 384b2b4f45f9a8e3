"""The method contract, checked for every registered method (one test, parametrized).

A method is a modeling folder + a recipe; whatever it is, a user gets: a tiny model built from a
backbone name, a forward pass on inputs made by the recipe's own transform with a finite loss and
gradients reaching the backbone, an identical model after save / `AutoModel.from_pretrained`, a
backbone export that plain transformers (and timm, for ViTs) loads without hf-ssl, and a model
card with the method's figures.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModel, ViTConfig, ViTModel

import hf_ssl
from hf_ssl.backbones import default_image_processor, is_timm_module
from hf_ssl.data import collate_samples, load_default_dataset
from hf_ssl.hub import write_model_card
from hf_ssl.recipes import BuildContext, available_methods, get_recipe
from hf_ssl.training import PretrainingArguments
from hf_ssl.training.outputs import BACKBONE_FOLDER, TIMM_BACKBONE_FOLDER, save_run_folder
from hf_ssl.transforms import ImageRowTransform, RowsByRole, build_transform

IMAGE_SIZE = 32
METHODS = available_methods()


def tiny_backbone_name(method: str) -> str:
    recipe = get_recipe(method)
    supported = recipe.supported_backbones
    if recipe.bundled_model:
        return recipe.bundled_model
    return "vit-micro" if ("vit" in supported or "any" in supported) else "swin-micro"


_TEACHERS = tempfile.TemporaryDirectory(prefix="hf-ssl-test-teacher-")  # removed when the tests exit


def tiny_teacher() -> str:
    """A saved tiny ViT with weights, for a method that distils from a ``teacher`` flag."""
    folder = Path(_TEACHERS.name) / "vit"
    if not (folder / "model.safetensors").is_file():
        torch.manual_seed(1)
        ViTModel(ViTConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=24, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=48), add_pooling_layer=False).save_pretrained(folder)
    return str(folder)


def tiny_context(method: str) -> BuildContext:
    recipe = get_recipe(method)
    method_arguments = recipe.method_arguments_defaults()
    if getattr(method_arguments, "teacher", "") is None:
        method_arguments.teacher = tiny_teacher()
    return BuildContext(
        backbone=hf_ssl.resolve_backbone(tiny_backbone_name(method), IMAGE_SIZE),
        image_size=IMAGE_SIZE,
        method_arguments=method_arguments,
        columns=recipe.columns(PretrainingArguments(method=method), method_arguments),
    )


def recipe_batch(method: str, context: BuildContext, count: int = 4) -> dict[str, torch.Tensor]:
    """A batch made exactly as training makes it: bundled rows -> the recipe's transform -> collate."""
    recipe = get_recipe(method)
    rows = load_default_dataset("train").select(range(count))
    transform = RowsByRole(context.columns, recipe.build_transform(context))
    samples = []
    for index, row in enumerate(rows):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(index)
            samples.append({**transform(row), "skipped_samples": 0})
    batch = collate_samples(samples)
    batch.pop("skipped_samples")
    return batch


def with_teacher_inputs(model, batch: dict) -> dict:
    """A model that distils from an attached teacher gets the teacher's outputs as inputs, so that a
    copy loaded without the teacher (a checkpoint never holds it) computes the same loss."""
    if not hasattr(model, "teacher_targets") or model.teacher is None:
        return batch
    embeddings, features = model.teacher_targets(batch["pixel_values"])
    return {**batch, "teacher_embeddings": embeddings, "teacher_features": features}


def build_tiny(method: str):
    """The tiny model, prepared as the training run prepares it (e.g. a fitted patch tokenizer)."""
    recipe = get_recipe(method)
    context = tiny_context(method)
    torch.manual_seed(0)
    model = recipe.build_model(context)
    if recipe.prepares_model:
        evaluation = RowsByRole({"image": context.columns["image"]},
                                ImageRowTransform(build_transform("eval", IMAGE_SIZE)))
        pixels = torch.stack([evaluation(row)["pixel_values"] for row in load_default_dataset("train").select(range(16))])
        recipe.prepare_model(model, [pixels])
    return model, context


def seeded_loss(model, batch: dict, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return model(**batch).loss


@pytest.mark.parametrize("method", METHODS)
def test_forward_backward_and_save_load(method, tmp_path):
    model, context = build_tiny(method)
    batch = with_teacher_inputs(model, recipe_batch(method, context))
    model.train()
    loss = seeded_loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    backbone_gradients = [parameter.grad for parameter in model.get_backbone().parameters() if parameter.requires_grad]
    assert any(gradient is not None and gradient.abs().sum() > 0 for gradient in backbone_gradients)

    model.eval()
    with torch.no_grad():
        expected = seeded_loss(model, batch)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"].startswith("hf-ssl-")
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(seeded_loss(loaded, batch), expected)


@pytest.mark.parametrize("method", METHODS)
def test_backbone_blocks_are_named_for_fsdp_wrapping_and_device_maps(method):
    """accelerate's FSDP auto-wrap and transformers' device maps read `_no_split_modules`."""
    model, _ = build_tiny(method)
    backbone_blocks = {type(module).__name__ for module in model.get_backbone().modules()} & model._no_split_modules
    assert backbone_blocks, (method, model._no_split_modules)
    # accelerate's FSDP auto-wrap raises for a listed class that is absent from the model; embeddings are
    # no shard unit (methods call their pieces, which would bypass the unit's all-gather)
    assert model._no_split_modules <= {type(module).__name__ for module in model.modules()}, method
    assert not any(name.endswith("Embeddings") for name in model._no_split_modules), method
    assert model.get_input_embeddings() is None  # accelerate's FSDP preparation calls it


def test_timm_backbones_name_their_residual_blocks():
    from hf_ssl.backbones.modules import VisionBackbone

    backbone = VisionBackbone(hf_ssl.resolve_backbone("timm/resnet10t", IMAGE_SIZE).nested())
    assert backbone._no_split_modules == {"BasicBlock"}


def test_names_follow_one_pattern():
    for method in METHODS:
        for config_class, model_classes, _ in get_recipe(method).registrations:
            assert config_class.model_type.startswith("hf-ssl-") or config_class.__name__.startswith("Legacy"), config_class
            for model_class in model_classes if isinstance(model_classes, tuple) else (model_classes,):
                assert "For" in model_class.__name__, model_class  # <Backbone>For<Method>
                output_annotation = str(model_class.forward.__annotations__.get("return", ""))
                assert output_annotation.endswith("Output"), (model_class, output_annotation)


def test_each_shipped_method_is_one_folder():
    """A method's recipe, config and model classes live in one folder, ``modeling/<method>/``, and
    every folder with a ``recipe.py`` registers at least one method."""
    from pathlib import Path

    folders = {path.parent.name for path in (Path(hf_ssl.modeling.__file__).parent).glob("*/recipe.py")}
    registered_from = {}
    for method in METHODS:
        module = type(get_recipe(method)).__module__
        if not module.startswith("hf_ssl.modeling."):
            continue  # a method that a test module defines
        folder = module.split(".")[2]
        assert module == f"hf_ssl.modeling.{folder}.recipe", (method, module)
        registered_from.setdefault(folder, []).append(method)
        for config_class, model_classes, _ in get_recipe(method).registrations:
            for cls in (config_class, *(model_classes if isinstance(model_classes, tuple) else (model_classes,))):
                assert cls.__module__.startswith(f"hf_ssl.modeling.{folder}."), (method, cls)
    assert set(registered_from) == folders


def test_a_new_method_folder_is_found_without_editing_anything_else(tmp_path):
    """Dropping a folder with a ``recipe.py`` next to the shipped ones registers its method."""
    folder = tmp_path / "more_methods" / "toy_method"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "recipe.py").write_text(textwrap.dedent("""
        from hf_ssl.modeling.simclr.recipe import SimCLRRecipe
        from hf_ssl.recipes import register_recipe

        class ToyRecipe(SimCLRRecipe):
            name = "toy-method"

        register_recipe(ToyRecipe())
    """))
    script = textwrap.dedent(f"""
        import hf_ssl.modeling
        hf_ssl.modeling.__path__.append({str(folder.parent)!r})  # as if the folder sat in modeling/
        from hf_ssl.recipes import available_methods, get_recipe, load_method_folders
        assert "toy-method" not in available_methods()
        print(load_method_folders())
        print(type(get_recipe("toy-method")).__module__)
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "hf_ssl.modeling.toy_method.recipe" in completed.stdout


def test_config_docstrings_link_only_to_classes_that_exist():
    """MAEConfig's docstring named MAEForPreTraining, a class renamed ViTForMAE long before."""
    import transformers

    for method in METHODS:
        for config_class, _, _ in get_recipe(method).registrations:
            for name in re.findall(r"\[`(\w+)`\]", config_class.__doc__ or ""):
                assert hasattr(hf_ssl, name) or hasattr(transformers, name), (config_class.__name__, name)


def _run_without_hf_ssl(script: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter in which ``import hf_ssl`` fails."""
    prelude = "import sys\nsys.modules['hf_ssl'] = None  # importing hf_ssl now raises ImportError\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_exports_load_in_plain_transformers_and_timm_without_hf_ssl(tmp_path):
    expected = {}
    for method in METHODS:
        model, _ = build_tiny(method)
        model.eval()
        folder = tmp_path / method
        processor = default_image_processor(IMAGE_SIZE)
        model.export_backbone(folder / BACKBONE_FOLDER, processor)
        backbone = model.get_backbone()
        pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            if is_timm_module(backbone):
                reference = backbone(pixels)
            else:
                hidden = backbone(pixel_values=pixels).last_hidden_state
                reference = hidden[:, 1:].mean(1) if hidden.ndim == 3 and backbone.config.model_type == "vit" else None
        timm_folder = None if is_timm_module(backbone) else model.export_timm(folder / TIMM_BACKBONE_FOLDER, processor)
        torch.save({"pixels": pixels, "reference": reference}, folder / "reference.pt")
        expected[method] = {"timm": str(timm_folder) if timm_folder else None}
    script = f"""
    import json, logging, torch, timm
    from transformers import AutoModel, AutoModelForImageClassification
    reports = []  # transformers' load reports (weights missing from or unexpected in the checkpoint)
    logging.getLogger("transformers").addHandler(type("Reports", (logging.Handler,), {{"emit": lambda self, record: reports.append(record.getMessage())}})())
    expected = json.loads({json.dumps(json.dumps(expected))})
    for method, info in expected.items():
        folder = {str(tmp_path)!r} + "/" + method
        data = torch.load(folder + "/reference.pt")
        backbone = AutoModel.from_pretrained(folder + "/backbone").eval()
        assert not [report for report in reports if "LOAD REPORT" in report], (method, reports)
        classifier = AutoModelForImageClassification.from_pretrained(folder + "/backbone", num_labels=3)
        assert classifier(pixel_values=data["pixels"]).logits.shape == (2, 3), method
        reports.clear()  # a classifier's load reports its new head (and a ViT's unused pooler)
        if info["timm"]:
            model = timm.create_model("local-dir:" + info["timm"], pretrained=True).eval()
            with torch.no_grad():
                torch.testing.assert_close(model(data["pixels"]), data["reference"], rtol=1e-4, atol=1e-5)
        print("ok", method, type(backbone).__name__)
    assert "hf_ssl" not in [name.split(".")[0] for name in sys.modules if sys.modules[name] is not None]
    """
    result = _run_without_hf_ssl(script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(line.split()[1] for line in result.stdout.splitlines() if line.startswith("ok")) == sorted(METHODS)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_trust_remote_code_folder_loads_without_hf_ssl_and_matches(method, tmp_path):
    """The pushed folder carries every hf_ssl module the method imports: no hf-ssl install needed."""
    from remote_code_check import assert_remote_code_matches

    model, context = build_tiny(method)
    report = assert_remote_code_matches(model.eval(), with_teacher_inputs(model, recipe_batch(method, context, count=2)),
                                        tmp_path / "model")
    assert report["class"].endswith(type(model).__name__) and report["class"].startswith("transformers_modules")


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_run_folder_card_renders_with_the_methods_figures(method, tmp_path):
    model, _ = build_tiny(method)
    recipe = get_recipe(method)
    training_arguments = {"method": method, "model": tiny_backbone_name(method), "dataset_name": "digits",
                          "image_size": IMAGE_SIZE, "max_steps": 2, "total_batch_size": 4}
    save_run_folder(model, tmp_path, default_image_processor(IMAGE_SIZE), training_arguments)
    (tmp_path / "training_log.jsonl").write_text(
        "".join(json.dumps({"step": step, "loss": 2.0 / step, "learning_rate": 1e-3}) + "\n" for step in (1, 2))
    )
    readme = write_model_card(tmp_path)
    card = ModelCard.load(readme)
    assert method in card.data.tags and recipe.card.title in card.text
    assert (tmp_path / "loss_curve.png").is_file()
    for figure in recipe.figures():
        assert (tmp_path / figure.file_name).is_file() and f"]({figure.file_name})" in card.text


EVALUATED = [(method, tiny_backbone_name(method)) for method in METHODS]
EVALUATED += [(method, "timm/resnet10t") for method in METHODS if "any" in get_recipe(method).supported_backbones][:2]


@pytest.mark.slow
@pytest.mark.parametrize("method, backbone", EVALUATED)
def test_run_folder_evaluates_with_every_protocol_and_baseline(method, backbone, tmp_path):
    """What the end of a run and ``hf-ssl evaluate`` do with the folder: every labelled protocol next
    to every baseline (a timm backbone's fine-tuning once crashed the end-of-run report)."""
    from hf_ssl.eval import evaluate_model
    from hf_ssl.eval.data import DataSelection
    from hf_ssl.eval.finetune import FinetuneSettings
    from hf_ssl.eval.protocol import available_protocols, get_protocol

    recipe = get_recipe(method)
    context = tiny_context(method)
    context.backbone = hf_ssl.resolve_backbone(backbone, IMAGE_SIZE)
    torch.manual_seed(0)
    model = recipe.build_model(context)
    if recipe.prepares_model:
        recipe.prepare_model(model, [torch.randn(16, 3, IMAGE_SIZE, IMAGE_SIZE)])
    save_run_folder(model, tmp_path, default_image_processor(IMAGE_SIZE), {"method": method, "model": backbone})
    protocols = [name for name in available_protocols() if not get_protocol(name).image_text]
    results = evaluate_model(tmp_path, protocols, data=DataSelection(max_samples=40), label_settings=("all", "10%"),
                             baselines=("random_init", "raw_pixels", "supervised"),
                             settings={name: FinetuneSettings(max_steps=2, batch_size=8) for name in protocols
                                       if get_protocol(name).trains_encoder})
    assert set(results) == {f"{protocol}{suffix}" for protocol in protocols for suffix in ("", "-10%")}
    for key, result in results.items():
        assert 0 <= result[result["metric"]] <= 1
        # supervised: the classifier beside accuracy rows; segmentation fine-tuning is its own from random init
        has_supervised = result["metric"] == "accuracy" or get_protocol(key.split("-")[0]).trains_encoder
        assert set(result["baselines"]) == {"random_init", "raw_pixels", *(["supervised"] if has_supervised else [])}
