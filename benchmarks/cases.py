"""What the suite measures: one `Case` per method, the sizes it runs at, and its reference implementations.

A case is measured per size on ONE batch shared by every implementation: the hf-ssl recipe's own
transform applied to synthetic images (and captions), stacked as the loader's collate does. The
hf-ssl side is built the way ``hf_ssl.cli.pretrain`` builds it (recipe context, `prepare_inputs`,
`build_model`, `prepare_model`, the recipe's parameter groups and hooks); when the method is not
registered in this checkout (its branch has not merged), the hf-ssl row is skipped with a note and
the references still run on the published view layout (`Case.fallback_transform`).

Adding a method = one `Case` entry in `CASES` (and a reference builder if it has a new one).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedConfig

from hf_ssl.recipes import (
    BuildContext,
    OptimizerDefaults,
    Recipe,
    ScheduleContext,
    StepContext,
    available_methods,
    get_recipe,
)
from hf_ssl.transforms import ImageRowTransform, build_transform

from reference_lightly import LIGHTLY_REFERENCES
from reference_transformers import (
    CAPTION_LENGTH,
    TEXT_VOCABULARY_SIZE,
    transformers_beit,
    transformers_dual_encoder,
    transformers_mae,
    transformers_simmim,
)
from steps import ModelStep, NotApplicable

HF_SSL = "hf-ssl"
# The schedules are read at the middle of a long run: hooks that only act early (DINO's frozen
# prototype layer) are in their steady state, as for most of a real run.
SCHEDULE_STEPS = 1000
SCHEDULE_STEP = 500


@dataclass(frozen=True)
class Size:
    """A backbone size the suite runs at (``--sizes``).

    Args:
        name: the ``--sizes`` value.
        model: the ``--model`` it stands for (a preset or ``timm/<name>``).
        image_size: input side; None: the recipe's resolution for `model` (224 without a recipe).
        family: ``"vit"``, ``"swin"`` or ``"cnn"``: which levers apply (SDPA / channels-last).
    """

    name: str
    model: str
    image_size: int | None
    family: str

    @property
    def has_attention(self) -> bool:
        return self.family in ("vit", "swin")

    @property
    def is_convolutional(self) -> bool:
        return self.family == "cnn"


SIZES = {
    size.name: size
    for size in (
        Size("micro", "vit-micro", 32, "vit"),  # CI only: keeps the script working in seconds
        Size("tiny", "vit-tiny", None, "vit"),
        Size("small", "vit-small", None, "vit"),
        Size("swin-tiny", "swin-tiny", None, "swin"),
        Size("resnet18", "timm/resnet18", None, "cnn"),
    )
}
DEFAULT_SIZES = ("tiny", "small", "swin-tiny", "resnet18")


@dataclass
class CaseInputs:
    """What every implementation of one (method, size) is measured on.

    Args:
        batch: the collated transform outputs, e.g. ``{"pixel_values": (B, 3, H, W)}``,
            ``{"pixel_values": (B, 2, 3, H, W)}`` or ``{"global_crops": (B, 2, 3, H, W),
            "local_crops": (B, L, 3, h, w)}``.
        row_transform: ``{role: raw cell} -> dict of tensors`` that produced it (timed by the data section).
        recipe: the registered hf-ssl recipe (None: the method is not registered here).
        context: the recipe's build context (None without a recipe).
        hf_ssl_config: the hf-ssl model's config, which references copy their sizes from (None
            without a recipe: references use the published defaults).
        optimizer: betas and gradient clipping every implementation of the group uses.
        batch_source: where the batch layout came from, for the results file.
    """

    case: Case
    size: Size
    image_size: int
    batch: dict[str, torch.Tensor]
    row_transform: Callable[[dict], dict]
    recipe: Recipe | None
    context: BuildContext | None
    hf_ssl_config: PreTrainedConfig | None
    optimizer: OptimizerDefaults
    batch_source: str
    evaluation_rows: list[dict] = field(default_factory=list)

    def config_value(self, name: str, default):
        """A field of the hf-ssl config, or `default` without one (references size their heads with it)."""
        return getattr(self.hf_ssl_config, name, default) if self.hf_ssl_config is not None else default


@dataclass(frozen=True)
class Case:
    """One method as the suite measures it.

    Args:
        method: the hf-ssl method name (``--method``).
        sizes: the `SIZES` it runs at.
        fallback_transform: ``image_size -> row transform`` with the published views, used when the
            method is not registered here.
        references: ``{implementation name: CaseInputs -> ModelStep}``.
        model_overrides: config fields set on the hf-ssl model (e.g. a tokenizer that needs no fitting).
        with_captions: rows carry a ``"caption"`` next to the ``"image"``.
        method_arguments: ``(size, image_size) -> {flag: value}`` set on the recipe's own flags
            (e.g. the teacher a distillation step runs).
        size_models: ``{size name: --model}`` for a method that takes its own encoder family at
            that size (DINOv2's presets, which have a mask token).
    """

    method: str
    sizes: tuple[str, ...]
    fallback_transform: Callable[[int], Callable[[dict], dict]]
    references: dict[str, Callable[[CaseInputs], ModelStep]]
    model_overrides: dict = field(default_factory=dict)
    with_captions: bool = False
    method_arguments: Callable[[Size, int], dict] | None = None
    size_models: dict = field(default_factory=dict)


def synthetic_image(index: int, side: int, seed: int = 0) -> Image.Image:
    """A smooth photo-like RGB image (upsampled noise): JPEG- and crop-friendly, deterministic."""
    rng = np.random.default_rng((seed, index))
    small = rng.integers(0, 256, (max(side // 16, 2), max(side // 16, 2), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)


def synthetic_caption(index: int) -> str:
    words = ("a", "photo", "of", "the", "small", "red", "dog", "cat", "on", "grass", "near", "water", "digit")
    rng = np.random.default_rng(index)
    return " ".join(words[i] for i in rng.integers(0, len(words), 12))


def synthetic_rows(count: int, image_size: int, with_captions: bool, seed: int = 0) -> list[dict]:
    """Raw rows ``{"image": PIL image[, "caption": str]}``, images a little larger than the crops (as datasets are)."""
    side = max(image_size * 8 // 7, 16)
    rows = [{"image": synthetic_image(index, side, seed)} for index in range(count)]
    if with_captions:
        for index, row in enumerate(rows):
            row["caption"] = synthetic_caption(index)
    return rows


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack each key, as the loader's collate does (bookkeeping keys dropped)."""
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0] if key != "skipped_samples"}


def _image_views(name: str, **options) -> Callable[[int], Callable[[dict], dict]]:
    return lambda image_size: ImageRowTransform(build_transform(name, image_size, **options))


class CaptionFallbackTransform:
    """Light image view + caption ids for a dual encoder without an hf-ssl recipe: the caption's
    characters as token ids, padded / cut to `CAPTION_LENGTH` (a tokenizer's cost is not the point)."""

    def __init__(self, image_size: int):
        self.image = ImageRowTransform(build_transform("light", image_size))

    def __call__(self, row: dict) -> dict[str, torch.Tensor]:
        ids = [1 + ord(character) % (TEXT_VOCABULARY_SIZE - 1) for character in row["caption"]][:CAPTION_LENGTH]
        attention_mask = [1] * len(ids) + [0] * (CAPTION_LENGTH - len(ids))
        ids += [0] * (CAPTION_LENGTH - len(ids))
        return {**self.image(row), "input_ids": torch.tensor(ids), "attention_mask": torch.tensor(attention_mask)}


def prepare_case(case: Case, size: Size, batch_size: int, seed: int = 0) -> CaseInputs:
    """The shared batch (the recipe's own transform when registered) and what references need.

    Raises:
        NotApplicable: the recipe refuses this backbone.
    """
    from hf_ssl.backbones import resolve_backbone

    size = dataclasses.replace(size, model=case.size_models.get(size.name, size.model))
    registered = case.method in available_methods()
    recipe = get_recipe(case.method) if registered else None
    image_size = size.image_size or (recipe.image_size_for(size.model) if recipe is not None else 224)
    rows = synthetic_rows(batch_size, image_size, case.with_captions, seed)
    if recipe is None:
        transform = case.fallback_transform(image_size)
        return CaseInputs(case=case, size=size, image_size=image_size, batch=collate([transform(row) for row in rows]),
                          row_transform=transform, recipe=None, context=None, hf_ssl_config=None,
                          optimizer=OptimizerDefaults(), batch_source="published views (method not registered here)",
                          evaluation_rows=rows)
    backbone = resolve_backbone(size.model, image_size)
    try:
        recipe.check_backbone(backbone)
    except ValueError as error:
        raise NotApplicable(str(error)) from error
    method_arguments = recipe.method_arguments_defaults()
    if case.method_arguments is not None:
        method_arguments = dataclasses.replace(method_arguments, **case.method_arguments(size, image_size))
    context = BuildContext(backbone=backbone, image_size=image_size, model_overrides=dict(case.model_overrides),
                           method_arguments=method_arguments)
    if recipe.prepares_inputs:
        recipe.prepare_inputs(context, rows)
    transform = recipe.build_transform(context)
    with torch.device("meta"):  # the config only: no memory, no initialisation
        config = recipe.build_model(context).config
    return CaseInputs(case=case, size=size, image_size=image_size, batch=collate([transform(row) for row in rows]),
                      row_transform=transform, recipe=recipe, context=context, hf_ssl_config=config,
                      optimizer=recipe.optimizer, batch_source=f"hf-ssl {case.method} recipe transform",
                      evaluation_rows=rows)


def hf_ssl_model_step(inputs: CaseInputs) -> ModelStep:
    """The hf-ssl model as the training loop drives it: recipe groups, schedule inputs and hooks."""
    recipe, context = inputs.recipe, inputs.context
    if recipe is None:
        raise NotApplicable(f"method {inputs.case.method!r} is not registered in this hf-ssl checkout "
                            f"(registered: {', '.join(available_methods())}); its branch has not merged yet")
    model = recipe.build_model(context)
    if recipe.prepares_model:
        evaluation = ImageRowTransform(build_transform("eval", inputs.image_size, context.image_mean, context.image_std))
        recipe.prepare_model(model, [collate([evaluation(row) for row in inputs.evaluation_rows])["pixel_values"]])
    weight_decay = recipe.optimizer.weight_decay
    schedules = recipe.schedules(ScheduleContext(
        max_steps=SCHEDULE_STEPS, warmup_steps=SCHEDULE_STEPS // 10, learning_rate=1e-4, weight_decay=weight_decay,
        method_arguments=context.method_arguments,
    ))
    values = {name: float(column[SCHEDULE_STEP]) for name, column in schedules.items()}
    step_context = StepContext(step=SCHEDULE_STEP, max_steps=SCHEDULE_STEPS, values=values)
    scheduled_inputs = {name: values[name] for name in recipe.forward_schedule_inputs}
    return ModelStep(
        module=model,
        loss=lambda runner, batch: runner(**batch, **scheduled_inputs).loss,
        parameter_groups=recipe.parameter_groups(model, weight_decay),
        after_backward=lambda: recipe.after_backward(model, step_context),
        after_optimizer_step=lambda: recipe.after_optimizer_step(model, step_context),
        note=f"{type(model).__name__}, built by the {recipe.name} recipe",
        follows_trainer_attention=True,
    )


def implementations(case: Case) -> dict[str, Callable[[CaseInputs], ModelStep]]:
    """hf-ssl first, then the references."""
    return {HF_SSL: hf_ssl_model_step, **case.references}


# A tokenizer with a uniform random vocabulary costs the same per step as a fitted one and needs
# no k-means over training images.
_UNIFORM_TOKENIZER = {"tokenizer_method": "uniform"}
_VIT_SIZES = ("micro", "tiny", "small")
_ANY_SIZES = ("micro", "tiny", "small", "resnet18")
_BEIT = {"transformers BeitForMaskedImageModeling": transformers_beit}
_TEACHERS = tempfile.TemporaryDirectory(prefix="hf-ssl-benchmark-teachers-")  # removed when the suite exits


def _teacher_of_the_students_size(size: Size, image_size: int) -> dict:
    """``--teacher``: the student's own preset at random init, saved once per size, so that the row
    measures what a distillation step costs with an equal-size teacher (its forward on top)."""
    from hf_ssl.backbones import build_backbone, resolve_backbone

    folder = Path(_TEACHERS.name) / f"{size.model}-{image_size}"
    if not (folder / "model.safetensors").is_file():
        torch.manual_seed(0)
        build_backbone(resolve_backbone(size.model, image_size).nested()).save_pretrained(folder)
    return {"teacher": str(folder)}


CASES: dict[str, Case] = {
    case.method: case
    for case in (
        Case("splitmask", _VIT_SIZES, _image_views("light"), _BEIT, _UNIFORM_TOKENIZER),
        Case("beit", _VIT_SIZES, _image_views("light"), _BEIT, _UNIFORM_TOKENIZER),
        Case("simmim", (*_VIT_SIZES, "swin-tiny"), _image_views("light"),
             {"transformers ViT/SwinForMaskedImageModeling": transformers_simmim}),
        Case("mae", _VIT_SIZES, _image_views("light"), {"transformers ViTMAEForPreTraining": transformers_mae}),
        Case("dino", _ANY_SIZES, _image_views("multicrop", number_of_local_crops=8), {"lightly": LIGHTLY_REFERENCES["dino"]}),
        Case("dinov2", ("micro", "small"), _image_views("multicrop", number_of_local_crops=8),
             {"lightly": LIGHTLY_REFERENCES["dinov2"]}, size_models={"micro": "dinov2-micro", "small": "dinov2-small"}),
        *(
            Case(method, _ANY_SIZES, _image_views("simclr"), {"lightly": LIGHTLY_REFERENCES[method]})
            for method in ("simclr", "moco_v3", "byol", "simsiam", "barlow_twins", "vicreg")
        ),
        # No reference: no library at hand ships an unlabelled distillation step (lightly has none).
        Case("distillation", _VIT_SIZES, _image_views("light"), {}, method_arguments=_teacher_of_the_students_size),
        Case("dual_encoder", _VIT_SIZES, CaptionFallbackTransform,
             {"transformers VisionTextDualEncoderModel": transformers_dual_encoder}, with_captions=True),
    )
}

__all__ = [
    "CASES",
    "DEFAULT_SIZES",
    "HF_SSL",
    "SIZES",
    "Case",
    "CaseInputs",
    "NotApplicable",
    "Size",
    "collate",
    "hf_ssl_model_step",
    "implementations",
    "prepare_case",
    "synthetic_image",
    "synthetic_rows",
]
