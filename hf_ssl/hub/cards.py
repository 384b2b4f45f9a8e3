"""Model cards for run folders: Hub metadata, model-index with measured results, prose from the run.

`write_model_card(run_dir)` reads the run folder (config.json, training_args.json,
training_log.jsonl, eval_results.json), draws ``loss_curve.png`` and the figures the method's
recipe declares (`Recipe.figures`, e.g. ``reconstruction.png``) on a few images of the run's own
data, and renders the Jinja templates of ``model_cards/`` into ``README.md`` (and
``backbone/README.md`` for the exported encoder) through `huggingface_hub.ModelCard.from_template`,
so the YAML front matter is the one the Hub reads. The method's title, description, limitation
and tags come from its recipe (`Recipe.card`): this module knows no method.
"""

from __future__ import annotations

import json
import logging
import os
import re
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from hf_ssl.plots import save_loss_curve
from hf_ssl.recipes.base import MethodCard
from hf_ssl.training.outputs import read_training_arguments

logger = logging.getLogger(__name__)

DEFAULT_LICENSE = "apache-2.0"
PIPELINE_TAG = "image-feature-extraction"


def template_path(name: str) -> Path:
    """Path of a card template (``pretrained.md``, ``backbone.md``) from the ``model_cards`` folder.

    Looked up in the installed ``hf_ssl.model_cards`` package data first, then in the repository's
    top-level ``model_cards/`` next to the ``hf_ssl`` package (editable installs).
    """
    try:
        candidate = Path(str(resources.files("hf_ssl.model_cards") / name))
        if candidate.is_file():
            return candidate
    except ModuleNotFoundError:
        pass
    candidate = Path(__file__).resolve().parents[2] / "model_cards" / name
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f"model card template {name!r} not found in hf_ssl.model_cards or {candidate.parent}")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def count_parameters(folder: str | os.PathLike) -> int:
    """Number of weights in a folder's ``model.safetensors`` (read from the header, nothing loaded)."""
    total = 0
    with safe_open(str(Path(folder) / "model.safetensors"), framework="pt") as weights:
        for name in weights.keys():
            count = 1
            for size in weights.get_slice(name).get_shape():
                count *= size
            total += count
    return total


def _human_count(number: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if number >= scale:
            return f"{number / scale:.1f}{unit}"
    return str(number)


def describe_backbone(config: dict) -> tuple[str, str]:
    """``(class name, one-line description)`` of the encoder described by a config.json dict."""
    if "depths" in config or "swin" in str(config.get("model_type", "")):
        depths = config.get("depths", [])
        return "SwinModel", (
            f"Swin encoder (embed dim {config.get('embed_dim')}, depths {depths}, patch {config.get('patch_size')}, "
            f"window {config.get('window_size')})"
        )
    if config.get("source") == "timm" or "architecture" in config:
        return "timm model", f"timm {config.get('architecture')} ({config.get('model_args') or 'default arguments'})"
    if config.get("hidden_sizes"):  # ConvNeXt, ResNet
        class_name = (config.get("architectures") or [f"{str(config.get('model_type', '')).title()}Model"])[0]
        return class_name, (f"{config.get('model_type')} encoder (stage widths {config.get('hidden_sizes')}, "
                            f"depths {config.get('depths')})")
    encoder = config.get("encoder_config") if isinstance(config.get("encoder_config"), dict) else config
    return "ViTModel", (
        f"ViT encoder (hidden size {encoder.get('hidden_size')}, {encoder.get('num_hidden_layers')} layers, "
        f"{encoder.get('num_attention_heads')} heads, patch {encoder.get('patch_size')}, "
        f"image {encoder.get('image_size')})"
    )


# A Hub dataset id: "name" or "org/name".
HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# `datasets`' packaged builders: `--dataset_name parquet` reads local --data_files; it names no dataset.
PACKAGED_BUILDERS = ("arrow", "audiofolder", "csv", "imagefolder", "json", "pandas", "parquet", "text", "webdataset")


def _is_local_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith(("./", "../", "~")) or Path(name).exists()


def public_dataset_name(name) -> str:
    """How a card names a dataset: a local path only by its last component, since a card is public and
    the path only says where the files lay on one machine (``/home/me/data/scans`` -> ``scans``)."""
    name = str(name)
    return (Path(os.path.expanduser(name)).name or name) if _is_local_path(name) else name


def _dataset_description(dataset_name: str | None) -> str:
    from hf_ssl.eval.data import dataset_label, is_bundled_dataset

    return dataset_label(dataset_name) if is_bundled_dataset(dataset_name) else f"`{public_dataset_name(dataset_name)}`"


def _hub_dataset_ids(dataset_name: str | None) -> list[str] | None:
    """Dataset ids for the card's ``datasets`` metadata: Hub ids only (not local paths, packaged
    builders or bundled data)."""
    from hf_ssl.eval.data import is_bundled_dataset

    name = str(dataset_name)
    if is_bundled_dataset(dataset_name) or _is_local_path(name) or name in PACKAGED_BUILDERS or not HUB_DATASET_ID.match(name):
        return None
    return [name]


def _dataset_type(dataset: str) -> str:
    """A dataset identifier for model-index ``dataset.type`` (Hub id, or a slug of a description)."""
    from hf_ssl.data.default import BUNDLED_DATASET_LABELS

    if dataset == BUNDLED_DATASET_LABELS["digits"]:
        return "sklearn-digits"
    if dataset in BUNDLED_DATASET_LABELS.values():
        return "hf-ssl-digit-scenes"
    return dataset if " " not in dataset else "-".join(dataset.lower().split())


def protocol_title(name: str) -> str:
    """How a card names a protocol ("Linear probe"); an unregistered name (an older result) as is."""
    from hf_ssl.eval.protocol import available_protocols, get_protocol

    return get_protocol(name).title if name in available_protocols() else name


def eval_results_for_card(eval_results: dict, model_name: str) -> list[EvalResult]:
    """model-index entries (one per protocol and metric) from an ``eval_results.json`` dict."""
    entries = []
    for key, result in sorted(eval_results.items()):
        protocol = key.split("-", 1)[0]
        label_setting = result.get("label_setting", "all")
        labels = "" if label_setting in ("all", "none") else f", {label_setting} labels"  # none: zero-shot
        task_name = f"{protocol_title(protocol)}{labels}"
        dataset = public_dataset_name(result.get("dataset", "unknown"))
        # Classification results carry accuracy / top5_accuracy; other protocols (retrieval) name
        # their metrics "<name>@<k>" and their task in "task_type".
        metrics = [(key, "accuracy" if key == "accuracy" else "top-5-accuracy", name) for key, name in
                   (("accuracy", "top-1 accuracy"), ("top5_accuracy", "top-5 accuracy")) if key in result]
        metrics += [(key, key.split("@")[0].rsplit("_", 1)[-1], key.replace("_", " ")) for key in sorted(result)
                    if "@" in key and isinstance(result[key], (int, float))]
        metrics += [(key, key, key.replace("_", " ").replace("iou", "IoU")) for key in ("mean_iou", "pixel_accuracy")
                    if key in result]  # segmentation
        task_type = str(result.get("task_type", "image-classification"))
        for metric_key, metric_type, metric_name in metrics:
            entries.append(
                EvalResult(
                    task_type=task_type,
                    task_name=task_type.replace("-", " ").title(),
                    dataset_type=_dataset_type(dataset),
                    dataset_name=dataset,
                    dataset_split=str(result.get("split", "test")),
                    metric_type=metric_type,
                    metric_name=f"{task_name} {metric_name}",
                    metric_value=round(float(result[metric_key]), 4),
                )
            )
    return entries


def _baseline(result: dict, name: str):
    """A baseline's top-1 from a result (``random_init_accuracy`` is how 0.1 runs stored random init)."""
    value = result.get("baselines", {}).get(name)
    if value is None and name == "random_init":
        value = result.get("random_init_accuracy")
    return value


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _eval_rows(eval_results: dict) -> list[dict]:
    rows = []
    for key, result in sorted(eval_results.items()):
        if "accuracy" not in result:  # not a classification result (retrieval): model-index only
            continue
        protocol = key.split("-", 1)[0]
        top5 = result.get("top5_accuracy")
        rows.append(
            {
                "protocol": protocol_title(protocol),
                "labels": result.get("label_setting", "all"),
                "dataset": public_dataset_name(result.get("dataset", "unknown")),
                "split": result.get("split", "test"),
                "accuracy": f"{100 * result['accuracy']:.2f}",
                "top5": "-" if top5 is None else f"{100 * top5:.2f}",
                **{name: _percent(_baseline(result, name)) for name in ("random_init", "raw_pixels", "supervised")},
            }
        )
    return rows


def sample_images(training_args: dict, image_processor, count: int = 4):
    """``(count, C, H, W)`` images for the card's figures: the bundled test split for runs on the
    bundled data, else the first decodable images of the run's own training data (a dataset
    without labels has no other split to offer)."""
    from hf_ssl.data import decode_image, load_image_dataset
    from hf_ssl.data.images import UndecodableImageError
    from hf_ssl.eval.data import is_bundled_dataset, load_labelled_split

    dataset_name = training_args.get("dataset_name")
    if is_bundled_dataset(dataset_name):
        cells = load_labelled_split(dataset_name, "test").select(range(count))["image"]
    else:
        column = (training_args.get("columns") or {}).get("image") or training_args.get("image_column", "image")
        dataset = load_image_dataset(
            dataset_name, dataset_config_name=training_args.get("dataset_config_name"),
            data_dir=training_args.get("data_dir"), data_files=training_args.get("data_files"),
            split=training_args.get("train_split", "train"), streaming=True,
        )
        cells = (row[column] for row in dataset)
    images = []
    for cell in cells:
        try:
            images.append(decode_image(cell))
        except UndecodableImageError:
            continue
        if len(images) == count:
            break
    if not images:
        raise ValueError("no decodable image found for the card's figures")
    return image_processor(images=images, return_tensors="pt")["pixel_values"]


def save_figures(run_dir: Path, training_args: dict, recipe) -> list[dict]:
    """Draw the recipe's figures into the run folder; ``[{"file", "title", "caption"}]`` of those drawn."""
    from transformers import AutoImageProcessor

    from hf_ssl.safe_loading import load_pretrained

    figures = recipe.figures() if recipe is not None else ()
    if not figures:
        return []
    model = load_pretrained(run_dir)
    image_processor = AutoImageProcessor.from_pretrained(str(run_dir))
    pixel_values = sample_images(training_args, image_processor)
    drawn = []
    for figure in figures:
        figure.draw(model, pixel_values, image_processor.image_mean, image_processor.image_std, str(run_dir / figure.file_name))
        drawn.append({"file": figure.file_name, "title": figure.title, "caption": figure.caption})
    return drawn


def _recipe_of(training_args: dict, config: dict):
    """The recipe of the run (by ``--method``, else by the config's model type); None if unknown."""
    from hf_ssl.recipes import available_methods, get_recipe, recipe_for_model_type

    method = training_args.get("method")
    if method in available_methods():
        return get_recipe(method)
    return recipe_for_model_type(str(config.get("model_type", "")))


def _method_name(training_args: dict, config: dict) -> str:
    """The ``--method`` of the run; without training_args.json, guessed from the model type."""
    if training_args.get("method"):
        return str(training_args["method"])
    model_type = str(config.get("model_type", "unknown"))
    return model_type.removeprefix("hf-ssl-").removeprefix("hf_ssl_")


def _format_runtime(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "not recorded"
    minutes, second = divmod(int(round(seconds)), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}h {minute:02d}m {second:02d}s" if hours else f"{minute}m {second:02d}s"


def build_model_card(
    run_dir: str | os.PathLike,
    repo_id: str | None = None,
    license: str | None = None,
    base_model: str | None = None,
    make_figures: bool = True,
) -> ModelCard:
    """The card of a run folder (README.md contents), with figures written into the folder.

    Args:
        run_dir: the run folder (config.json, model.safetensors, training_args.json, ...).
        repo_id: Hub id the folder is pushed to (used in the snippets and as model name); without
            it the snippets load the local folder.
        license: SPDX-like Hub license id; default ``training_args["license"]`` or apache-2.0.
        base_model: the model this one was fine-tuned from, if any (Hub ``base_model``).
        make_figures: draw loss_curve.png / reconstruction.png (off: use the existing files).
    """
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json")
    training_args = read_training_arguments(run_dir)
    eval_results = _read_json(run_dir / "eval_results.json")
    method = _method_name(training_args, config)
    recipe = _recipe_of(training_args, config)
    method_card = recipe.card if recipe is not None else MethodCard(
        title=method, description=f"Pre-trained with the {method} method."
    )
    method_title = method_card.title
    model_name = repo_id.split("/")[-1] if repo_id else run_dir.resolve().name
    load_path = repo_id or str(run_dir)
    has_backbone = (run_dir / "backbone" / "config.json").is_file()
    backbone_repo_id = f"{repo_id}-backbone" if repo_id and has_backbone else None
    backbone_load_path = backbone_repo_id or (str(run_dir / "backbone") if has_backbone else load_path)
    backbone_class, backbone_description = describe_backbone(
        _read_json(run_dir / "backbone" / "config.json") if has_backbone else config
    )

    if make_figures and (run_dir / "training_log.jsonl").is_file():
        save_loss_curve(run_dir / "training_log.jsonl", run_dir / "loss_curve.png", title=f"{method_title} training loss")
    loss_curve = "loss_curve.png" if (run_dir / "loss_curve.png").is_file() else None
    figures = []
    if make_figures and (run_dir / "model.safetensors").is_file():
        figures = save_figures(run_dir, training_args, recipe)
    elif recipe is not None:  # figures drawn earlier are kept
        figures = [{"file": figure.file_name, "title": figure.title, "caption": figure.caption}
                   for figure in recipe.figures() if (run_dir / figure.file_name).is_file()]

    tags = ["hf-ssl", "self-supervised-learning", "image-feature-extraction", method, *method_card.tags]
    card_data = ModelCardData(
        library_name="transformers",
        license=license or training_args.get("license") or DEFAULT_LICENSE,
        pipeline_tag=PIPELINE_TAG,
        tags=list(dict.fromkeys(tags)),
        datasets=_hub_dataset_ids(training_args.get("dataset_name")),
        base_model=base_model,
        model_name=model_name,
        eval_results=eval_results_for_card(eval_results, model_name) or None,
    )
    num_parameters = count_parameters(run_dir) if (run_dir / "model.safetensors").is_file() else 0
    pooling = {result.get("pooling", "mean") for result in eval_results.values()}
    context = dict(
        model_name=model_name,
        method=method,
        method_title=method_title,
        method_description=method_card.description,
        method_limitation=method_card.limitation,
        backbone_class=backbone_class,
        backbone_description=backbone_description,
        backbone_repo_id=backbone_repo_id,
        dataset_description=_dataset_description(training_args.get("dataset_name")),
        num_parameters=_human_count(num_parameters),
        image_size=training_args.get("image_size", config.get("image_size")),
        max_steps=training_args.get("max_steps", "not recorded"),
        total_batch_size=training_args.get("total_batch_size", "not recorded"),
        num_images_seen=training_args.get("num_images_seen", "not recorded"),
        learning_rate=training_args.get("learning_rate", "not recorded"),
        mixed_precision=training_args.get("mixed_precision", "not recorded"),
        world_size=training_args.get("world_size", "not recorded"),
        hardware=training_args.get("hardware", "not recorded"),
        train_runtime=_format_runtime(training_args.get("train_runtime_s")),
        seed=training_args.get("seed", "not recorded"),
        training_args_json=json.dumps(training_args, indent=2, sort_keys=True, default=str),
        loss_curve=loss_curve,
        figures=figures,
        eval_rows=_eval_rows(eval_results),
        pooling_note=f"{'/'.join(sorted(pooling))}-pooled encoder features",
        load_path=load_path,
        backbone_load_path=backbone_load_path,
        remote_code=bool(config.get("auto_map")),  # written with the run folder (`add_remote_code`)
    )
    return ModelCard.from_template(card_data, template_path=str(template_path("pretrained.md")), **context)


def build_backbone_card(run_dir: str | os.PathLike, repo_id: str | None = None, license: str | None = None) -> ModelCard:
    """The card of ``run_dir/backbone`` (pushed as ``<repo_id>-backbone``)."""
    run_dir = Path(run_dir)
    training_args = read_training_arguments(run_dir)
    eval_results = _read_json(run_dir / "eval_results.json")
    config = _read_json(run_dir / "config.json")
    method = _method_name(training_args, config)
    recipe = _recipe_of(training_args, config)
    method_title = recipe.card.title if recipe is not None else method
    backbone_config = _read_json(run_dir / "backbone" / "config.json")
    backbone_class, backbone_description = describe_backbone(backbone_config)
    parent_name = repo_id.split("/")[-1] if repo_id else run_dir.resolve().name
    model_name = f"{parent_name}-backbone"
    card_data = ModelCardData(
        library_name="transformers",
        license=license or training_args.get("license") or DEFAULT_LICENSE,
        pipeline_tag=PIPELINE_TAG,
        tags=list(dict.fromkeys(["hf-ssl", "self-supervised-learning", "image-feature-extraction", method])),
        datasets=_hub_dataset_ids(training_args.get("dataset_name")),
        base_model=repo_id,
        model_name=model_name,
        eval_results=eval_results_for_card(eval_results, model_name) or None,
    )
    context = dict(
        model_name=model_name,
        parent_name=parent_name,
        parent_link=f"https://huggingface.co/{repo_id}" if repo_id else "..",
        backbone_class=backbone_class,
        backbone_description=backbone_description,
        method_title=method_title,
        dataset_description=_dataset_description(training_args.get("dataset_name")),
        max_steps=training_args.get("max_steps", "an unrecorded number of"),
        load_path=f"{repo_id}-backbone" if repo_id else str(run_dir / "backbone"),
        eval_rows=_eval_rows(eval_results),
    )
    return ModelCard.from_template(card_data, template_path=str(template_path("backbone.md")), **context)


def write_model_card(
    run_dir: str | os.PathLike,
    repo_id: str | None = None,
    license: str | None = None,
    base_model: str | None = None,
    make_figures: bool = True,
) -> Path:
    """Write ``README.md`` (+ loss_curve.png, reconstruction.png) into a run folder, and
    ``backbone/README.md`` when the folder has an exported backbone. Returns the README path.

    Called by ``hf-ssl pretrain`` after training and by `push_run_folder` before upload.
    """
    run_dir = Path(run_dir)
    card = build_model_card(run_dir, repo_id, license, base_model, make_figures)
    readme = run_dir / "README.md"
    card.save(readme)
    if (run_dir / "backbone" / "config.json").is_file():
        build_backbone_card(run_dir, repo_id, license).save(run_dir / "backbone" / "README.md")
    return readme


def build_segmentation_card(folder: str | os.PathLike, repo_id: str | None = None, license: str | None = None) -> ModelCard:
    """The card of a folder written by ``hf-ssl finetune --task segmentation`` (config.json,
    eval_results.json, finetune_args.json, predictions.png)."""
    from hf_ssl.eval.segmentation_model import FIGURE_FILE, FINETUNE_ARGUMENTS_FILE, RESULT_KEY, RESULTS_FILE

    folder = Path(folder)
    config = _read_json(folder / "config.json")
    eval_results = _read_json(folder / RESULTS_FILE)
    arguments = _read_json(folder / FINETUNE_ARGUMENTS_FILE)
    result = eval_results.get(RESULT_KEY, {})
    model_name = repo_id.split("/")[-1] if repo_id else folder.resolve().name
    backbone_class, backbone_description = describe_backbone(config.get("backbone_config", {}))
    source = arguments.get("model")
    base_model = source if source and HUB_DATASET_ID.match(str(source)) and not Path(str(source)).exists() else None
    card_data = ModelCardData(
        library_name="transformers",
        license=license or DEFAULT_LICENSE,
        pipeline_tag="image-segmentation",
        tags=["hf-ssl", "semantic-segmentation", "image-segmentation"],
        datasets=_hub_dataset_ids(arguments.get("data")),
        base_model=base_model,
        model_name=model_name,
        eval_results=eval_results_for_card(eval_results, model_name) or None,
    )
    settings = arguments.get("settings", {})
    context = dict(
        model_name=model_name,
        source_description=f"`{source}`" + (" (random init: no pre-trained weights)" if arguments.get("random_init") else ""),
        backbone_class=backbone_class,
        backbone_description=backbone_description,
        decoder_layers=config.get("decoder_layers"),
        dataset_description=result.get("dataset", "the user's data"),
        num_train_images=result.get("num_train_images"),
        num_test_images=result.get("num_test_images"),
        held_out=result.get("held_out", False),
        image_size=config.get("image_size"),
        num_classes=config.get("num_labels", len(config.get("id2label", {}))),
        load_path=repo_id or str(folder),
        mean_iou=_percent(result.get("mean_iou")) + " %",
        pixel_accuracy=_percent(result.get("pixel_accuracy")) + " %",
        validation_mean_iou=_percent(result.get("validation_mean_iou")) + " %",
        best_step=result.get("best_step"),
        steps=result.get("steps"),
        max_steps=result.get("max_steps"),
        stopped_early=result.get("stopped_early", False),
        class_rows=[(name, "absent" if value is None else f"{_percent(value)} %")
                    for name, value in (result.get("class_iou") or {}).items()],
        figure=FIGURE_FILE if (folder / FIGURE_FILE).is_file() else None,
        evaluations=settings.get("evaluations"),
        learning_rate=settings.get("learning_rate"),
        batch_size=settings.get("batch_size"),
        layer_decay=settings.get("layer_decay"),
        finetune_args_json=json.dumps(arguments, indent=2, sort_keys=True, default=str),
    )
    return ModelCard.from_template(card_data, template_path=str(template_path("segmentation.md")), **context)
