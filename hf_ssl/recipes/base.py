"""The method contract: everything a pre-training method plugs into the training loop.

A method is one folder, ``modeling/<method>/`` (installed as ``hf_ssl.modeling.<method>``): its
config and model (``configuration_<method>.py``, ``modeling_<method>.py``) and its ``recipe.py``,
which subclasses `Recipe` and registers an instance; `load_method_folders` finds the folders, so a
new method needs nothing outside its own. The loop,
``hf_ssl.cli.pretrain``, the model card and the figures never branch on the method name; they
ask the recipe:

- inputs: which dataset columns it reads (`columns`), what it derives from raw rows before
  anything is built (`prepare_inputs`, e.g. train a text tokenizer) and the per-row transform run
  in the DataLoader workers (`build_transform`, ``row -> dict of tensors``; the collate stacks each
  key, so multi-crop views of several sizes are separate keys);
- its own command-line flags (`arguments_class`, a dataclass parsed next to the common ones);
- the model (`build_model`) from a resolved ``--model`` (`BackboneSpec`) and the run's settings;
- optimisation: published defaults (`optimizer`), parameter groups with the weight-decay
  exemptions (`parameter_groups`), named per-step schedules (`schedules`: learning rate and
  weight decay, which the loop writes into the optimizer, plus any others, e.g. EMA momentum or a
  teacher temperature), schedule values passed to ``forward`` (`forward_schedule_inputs`);
- hooks: `prepare_model` (once, before training, on evaluation-transformed images),
  `after_backward` (between backward and the optimizer step, after clipping) and
  `after_optimizer_step` (e.g. an EMA update);
- its model card text and tags (`card`), figures (`figures`) and any file the run folder needs
  besides the model and image processor (`save_extra_files`, e.g. a tokenizer and processor);
- published configurations selectable with ``--preset NAME`` (`presets`).

Every scalar tensor the model output carries (``loss``, ``mim_loss``, ``contrastive_loss``, a
collapse metric, ...) is logged by the loop.
"""

from __future__ import annotations

import math

import dataclasses
import importlib
import importlib.util
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from hf_ssl.backbones import BackboneSpec
from hf_ssl.registry import register_models
from hf_ssl.schedules import constant_schedule, cosine_schedule_with_warmup
from hf_ssl.visualization import register_reconstruction_panels, save_reconstruction_figure

# Where the method folders are (``modeling/`` in the source tree).
METHODS_PACKAGE = "hf_ssl.modeling"

# Parameters that no official recipe (BEiT, MAE, SimMIM, DINO, MoCo v3, timm's no_weight_decay())
# decays, matched against any component of the parameter's dotted name; on top of these, every
# parameter with fewer than 2 dimensions (biases, norm scales) is exempt.
NO_WEIGHT_DECAY_NAMES = (
    "cls_token",
    "mask_token",
    "position_embeddings",
    "pos_embed",
    "decoder_pos_embed",
    "relative_position_bias_table",
    "register_tokens",
    "reg_token",
    "dist_token",
    "logit_scale",
    "logit_bias",
)


@dataclass(frozen=True)
class OptimizerDefaults:
    """Published AdamW + schedule defaults of a method.

    Args:
        base_learning_rate: learning rate at `reference_batch_size`; the run scales it linearly
            by ``total_batch_size / reference_batch_size`` (the rule the papers use).
        reference_batch_size: batch size that `base_learning_rate` refers to (256, 512, 2048).
        weight_decay: AdamW weight decay (start value when `final_weight_decay` is set).
        final_weight_decay: if set, weight decay follows a cosine from `weight_decay` to this
            value over training (DINO: 0.04 -> 0.4); None keeps it constant.
        betas: AdamW betas.
        warmup_fraction: fraction of the total steps spent in linear warm-up.
        min_learning_rate_ratio: final learning rate of the cosine, as a fraction of the peak.
        gradient_clip_norm: max gradient norm (None disables clipping).
        learning_rate_scaling: ``"linear"`` (``base * batch / reference``, most papers) or ``"sqrt"``
            (``base * sqrt(batch / reference)``, DINOv2's ``sqrt_wrt_1024``).
    """

    base_learning_rate: float = 1.5e-4
    reference_batch_size: int = 256
    weight_decay: float = 0.05
    final_weight_decay: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.05
    min_learning_rate_ratio: float = 0.01
    gradient_clip_norm: float | None = 3.0
    learning_rate_scaling: str = "linear"

    def scaled_learning_rate(self, total_batch_size: int) -> float:
        """The method's scaling rule: ``base_learning_rate * total_batch_size / reference_batch_size``,
        or its square root for ``learning_rate_scaling="sqrt"``."""
        ratio = total_batch_size / self.reference_batch_size
        return self.base_learning_rate * (math.sqrt(ratio) if self.learning_rate_scaling == "sqrt" else ratio)


@dataclass(frozen=True)
class Preset:
    """A published configuration of a method, selected with ``--preset <name>``.

    A preset sets pre-training arguments and model config fields as a paper published them;
    ``--config`` YAML values and explicit flags win over it (its model overrides are merged under
    the user's ``--model_overrides``).

    Args:
        name: the ``--preset`` value (unique over all methods).
        description: one line: paper, model, published schedule length.
        source: where the values come from (paper section, official config file).
        arguments: values of pre-training flags, common ones (``model``, ``image_size``,
            ``total_batch_size``, ``weight_decay``, ``max_grad_norm``, ...) and the method's own.
        model_overrides: model config fields.
        base_learning_rate, reference_batch_size: the linear scaling rule of the run's learning
            rate, ``base_learning_rate * total_batch_size / reference_batch_size`` (None: the
            recipe's `optimizer` values); applied unless ``--learning_rate`` is given.
        warmup_fraction: warm-up as a fraction of ``--max_steps`` (published warm-up epochs /
            published epochs; None: the recipe's); applied unless ``--warmup_steps`` is given.
        epochs: the published number of epochs (the run's length is ``--max_steps``).
    """

    name: str
    description: str
    source: str
    arguments: dict = field(default_factory=dict)
    model_overrides: dict = field(default_factory=dict)
    base_learning_rate: float | None = None
    reference_batch_size: int | None = None
    warmup_fraction: float | None = None
    epochs: int | None = None


@dataclass(frozen=True)
class MethodCard:
    """What the model card says about the method.

    Args:
        title: display name ("SplitMask").
        description: one paragraph: what the method learns from, with its citation.
        limitation: one sentence for the card's limitations list.
        tags: Hub tags added to the card.
    """

    title: str
    description: str
    limitation: str = "See the method's paper for its known limits."
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Figure:
    """A picture the model card shows, drawn from the trained model and a few images.

    Args:
        file_name: PNG written into the run folder (``reconstruction.png``).
        title: section title in the card.
        caption: one sentence under the title.
        draw: ``(model, pixel_values (B, C, H, W), image_mean, image_std, path) -> None``; the images
            are evaluation-transformed (the run's image processor).
    """

    file_name: str
    title: str
    caption: str
    draw: Callable[[PreTrainedModel, torch.Tensor, Sequence[float], Sequence[float], str], None]


@dataclass
class BuildContext:
    """What a recipe builds its model and its transform from (resolved run settings).

    Args:
        backbone: the resolved ``--model``.
        image_size: input side in pixels.
        model_overrides: config fields the user set (``--model_overrides``).
        method_arguments: the parsed `Recipe.arguments_class` instance (None without one).
        image_mean, image_std: normalisation of the inputs.
        columns: dataset column per input role (`Recipe.columns`).
        artifacts: what `Recipe.prepare_inputs` derived from the data before the transform and the
            model were built (e.g. a tokenizer trained on the captions).
    """

    backbone: BackboneSpec
    image_size: int
    model_overrides: dict = field(default_factory=dict)
    method_arguments: Any = None
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    columns: dict[str, str] = field(default_factory=lambda: {"image": "image"})
    artifacts: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScheduleContext:
    """What a recipe computes its per-step schedules from.

    Args:
        max_steps: optimizer steps of the run (each schedule has this length).
        warmup_steps: linear warm-up steps of the learning rate.
        learning_rate: peak learning rate (already scaled by the batch size, or the user's).
        weight_decay: the weight decay the user set, or the recipe's.
        steps_per_epoch: optimizer steps per pass over the data when the dataset has a known
            length (None for streams of unknown length).
        method_arguments: the parsed `Recipe.arguments_class` instance (None without one).
    """

    max_steps: int
    warmup_steps: int
    learning_rate: float
    weight_decay: float
    steps_per_epoch: int | None = None
    method_arguments: Any = None


@dataclass
class StepContext:
    """Where the loop is, passed to the hooks.

    Args:
        step: index of the optimizer step being taken (0-based).
        max_steps: total optimizer steps.
        values: this step's value of every schedule (``values["learning_rate"]``, ...).
    """

    step: int
    max_steps: int
    values: dict[str, float]


def weight_decay_groups(model: nn.Module, weight_decay: float, is_exempt: Callable[[str, nn.Parameter], bool]) -> list[dict]:
    """The two AdamW groups of `model`'s trainable parameters: decayed, and exempt where
    ``is_exempt(name, parameter)``. Each group carries ``apply_weight_decay`` so that a weight-decay
    schedule only moves the decayed group."""
    decayed, exempt = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (exempt if is_exempt(name, parameter) else decayed).append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay, "apply_weight_decay": True},
        {"params": exempt, "weight_decay": 0.0, "apply_weight_decay": False},
    ]


def parameter_groups(model: nn.Module, weight_decay: float, extra_exemptions: Iterable[str] = ()) -> list[dict]:
    """AdamW groups: decayed weights, and exempt ones (biases, norms, tokens, position tables).

    A parameter is exempt when it has fewer than 2 dimensions, when any component of its dotted
    name is in `NO_WEIGHT_DECAY_NAMES` or `extra_exemptions`, or when the model's
    ``no_weight_decay()`` (timm's convention) names it.
    """
    exempt_names = set(NO_WEIGHT_DECAY_NAMES) | set(extra_exemptions)
    model_exemptions = set(model.no_weight_decay()) if callable(getattr(model, "no_weight_decay", None)) else set()
    return weight_decay_groups(model, weight_decay, lambda name, parameter: (
        parameter.ndim < 2 or name in model_exemptions or bool(exempt_names & set(name.split(".")))))


@dataclass(frozen=True)
class FinetunePreset:
    """A published fine-tuning recipe of a method (``hf-ssl evaluate --finetune_preset <name>``), declared by
    its recipe (`Recipe.finetune_presets`).

    Args:
        name, description, source: what it is and where the values come from.
        epochs: published epochs.
        batch_size: published total batch size.
        base_learning_rate, reference_batch_size: learning rate = base * batch / reference.
        layer_decay, drop_path_rate, weight_decay: as published.
        warmup_fraction: warm-up epochs / epochs.
        min_learning_rate_ratio: final learning rate of the cosine / peak (``min_lr`` / ``lr``).
        label_smoothing: cross-entropy label smoothing.
    """

    name: str
    description: str
    source: str
    epochs: int
    batch_size: int
    base_learning_rate: float
    reference_batch_size: int
    layer_decay: float
    drop_path_rate: float
    weight_decay: float
    warmup_fraction: float
    min_learning_rate_ratio: float
    label_smoothing: float

    def learning_rate(self, batch_size: int) -> float:
        """The linear scaling rule at `batch_size`."""
        return self.base_learning_rate * batch_size / self.reference_batch_size


class Recipe(ABC):
    """A pre-training method as the training loop sees it; subclass and register an instance.

    Class attributes a subclass sets:
        name: the ``--method`` value.
        description: one line for ``--help``.
        card: the model card's text and tags.
        registrations: ``((config_class, model_class, ("AutoModel", ...)), ...)``: the Auto classes
            each model is registered with on ``import hf_ssl``.
        arguments_class: a dataclass of method-specific flags (None: no flags of its own).
        optimizer: published optimizer and schedule defaults.
        default_model: backbone used when ``--model`` is not given.
        bundled_model: backbone of the bundled small-image run when neither the ViT nor the conv
            net fits the method ("" for those).
        default_image_size: input size when ``--image_size`` is not given.
        bundled_run_defaults: run settings for the bundled data that differ from the common ones
            (e.g. ``{"learning_rate": 1e-3}``), measured on it.
        supported_backbones: backbone families the method can build on (``"vit"``, ``"swin"``,
            ...; ``"any"`` for every transformers / timm vision model).
        forward_schedule_inputs: schedule names passed to ``model.forward`` as keyword arguments.
        prepares_inputs: call `prepare_inputs` with raw training rows before the transform and the
            model are built.
        prepares_model: call `prepare_model` before training (it reads training images first).
        reconstruction_panels: for masked image modeling, ``(model, pixel_values, generator) ->
            ReconstructionPanels`` (see `hf_ssl.visualization`); None otherwise.
        presets: published configurations (`Preset`), selectable with ``--preset <name>``.
        finetune_presets: the published fine-tuning recipes of the method's papers (`FinetunePreset`).
    """

    name: str = ""
    description: str = ""
    card: MethodCard = MethodCard(title="", description="")
    registrations: tuple[tuple[type, type, tuple[str, ...]], ...] = ()
    arguments_class: type | None = None
    optimizer: OptimizerDefaults = OptimizerDefaults()
    default_model: str = "vit-small"
    bundled_model: str = ""
    default_image_size: int = 224
    bundled_run_defaults: dict = {}
    supported_backbones: tuple[str, ...] = ("vit",)
    forward_schedule_inputs: tuple[str, ...] = ()
    prepares_inputs: bool = False
    prepares_model: bool = False
    reconstruction_panels: Callable | None = None
    finetune_presets: tuple[FinetunePreset, ...] = ()
    presets: tuple[Preset, ...] = ()

    # ----- inputs ---------------------------------------------------------------------------

    def image_size_for(self, backbone_name: str) -> int:
        """The recipe's default input resolution for a backbone name."""
        return self.default_image_size

    def columns(self, arguments, method_arguments) -> dict[str, str]:
        """Dataset column per input role; the transform receives ``{role: cell}``."""
        return {"image": arguments.image_column}

    def prepare_inputs(self, context: BuildContext, rows: Iterable[dict]) -> None:
        """Derive what the transform and the model need from raw rows ``{role: cell}`` (the first
        training rows, the same on every process) into ``context.artifacts``; when
        `prepares_inputs` is True."""

    def build_transform(self, context: BuildContext) -> Callable[[dict], dict[str, torch.Tensor]]:
        """The per-row transform run in DataLoader workers (picklable). Default: one "light" view."""
        from hf_ssl.transforms import ImageRowTransform, build_transform

        return ImageRowTransform(build_transform("light", context.image_size, context.image_mean, context.image_std))

    def describe_views(self, context: BuildContext) -> str:
        """What the model sees of each image, for the plan a run prints at start."""
        return f"1 view of {context.image_size} px"

    # ----- model ----------------------------------------------------------------------------

    @abstractmethod
    def build_model(self, context: BuildContext) -> PreTrainedModel:
        """The method's model, randomly initialised, for `context.backbone` at `context.image_size`."""

    def check_backbone(self, backbone: BackboneSpec) -> None:
        """Raise a ValueError when the method cannot build on this backbone family."""
        if "any" in self.supported_backbones or backbone.family in self.supported_backbones:
            return
        raise ValueError(
            f"--method {self.name} needs a {' or '.join(self.supported_backbones)} backbone (it masks image patches), "
            f"got {backbone.name!r} ({backbone.family}); use a preset such as "
            f"{self.default_model} or a folder holding such a model"
        )

    def prepare_model(self, model: PreTrainedModel, pixel_batches: Iterable[torch.Tensor]) -> None:
        """Called once before training when `prepares_model` is True (e.g. fit a tokenizer)."""

    # ----- optimisation ---------------------------------------------------------------------

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        """AdamW parameter groups; the default exempts biases, norms, tokens and position tables."""
        return parameter_groups(model, weight_decay)

    def schedules(self, context: ScheduleContext) -> dict[str, torch.Tensor]:
        """Per-step values, one ``(max_steps,)`` tensor each: ``learning_rate`` and ``weight_decay`` at least."""
        defaults = self.optimizer
        learning_rates = cosine_schedule_with_warmup(
            context.learning_rate, context.learning_rate * defaults.min_learning_rate_ratio, context.max_steps,
            context.warmup_steps,
        )
        if defaults.final_weight_decay is None:
            weight_decays = constant_schedule(context.weight_decay, context.max_steps)
        else:
            weight_decays = cosine_schedule_with_warmup(context.weight_decay, defaults.final_weight_decay, context.max_steps)
        return {"learning_rate": learning_rates, "weight_decay": weight_decays}

    def after_backward(self, model: PreTrainedModel, step: StepContext) -> None:
        """Between backward (and clipping) and the optimizer step, e.g. cancel some gradients."""

    def after_optimizer_step(self, model: PreTrainedModel, step: StepContext) -> None:
        """After every optimizer step, e.g. an EMA teacher update."""

    # ----- model card -----------------------------------------------------------------------

    def figures(self) -> tuple[Figure, ...]:
        """Pictures for the model card; masked image modeling gets its reconstruction figure."""
        if self.reconstruction_panels is None:
            return ()
        panels = self.reconstruction_panels

        def draw(model, pixel_values, image_mean, image_std, path):
            save_reconstruction_figure(model, pixel_values, path, image_mean, image_std, panels=panels)

        return (
            Figure(
                file_name="reconstruction.png",
                title="Reconstructions",
                caption="Input, what the encoder sees, the model's prediction and the hidden target, on held-out images:",
                draw=draw,
            ),
        )

    def save_extra_files(self, model: PreTrainedModel, context: BuildContext, output_dir) -> None:
        """Write files the run folder needs besides the model and the image processor (e.g. a
        tokenizer and a processor, so ``pipeline(..., model=run_dir)`` works)."""

    def method_arguments_defaults(self):
        """An instance of `arguments_class` with its defaults (None without one)."""
        return self.arguments_class() if self.arguments_class is not None else None


_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    """Add `recipe` to the method registry (``--method recipe.name``) and its models to the Auto classes."""
    if not recipe.name:
        raise ValueError(f"{type(recipe).__name__} has no name")
    if recipe.name in _RECIPES and type(_RECIPES[recipe.name]) is not type(recipe):
        raise ValueError(f"A recipe named {recipe.name!r} is already registered")
    if recipe.arguments_class is not None and not dataclasses.is_dataclass(recipe.arguments_class):
        raise TypeError(f"{type(recipe).__name__}.arguments_class must be a dataclass")
    _RECIPES[recipe.name] = recipe
    register_models(recipe.registrations)
    if recipe.reconstruction_panels is not None:
        for _, model_classes, _ in recipe.registrations:  # one class, or a tuple (SimMIM: Swin and ViT)
            for model_class in model_classes if isinstance(model_classes, tuple) else (model_classes,):
                register_reconstruction_panels(model_class, recipe.reconstruction_panels)
    return recipe


def load_method_folders(package: str = METHODS_PACKAGE) -> list[str]:
    """Import the ``recipe`` module of every sub-package of `package` that has one (each registers
    its method on import); returns the imported modules' names. Folders without a ``recipe.py``
    (shared family code) are skipped."""
    loaded = []
    for folder in pkgutil.iter_modules(importlib.import_module(package).__path__):
        name = f"{package}.{folder.name}.recipe"
        if folder.ispkg and importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
            loaded.append(name)
    return loaded


def register_auto_classes() -> None:
    """Register the configs and models of every registered method with the transformers Auto
    classes again (idempotent; ``import hf_ssl`` has done it once)."""
    for recipe in _RECIPES.values():
        register_models(recipe.registrations)


def get_recipe(name: str) -> Recipe:
    """The registered recipe `name`; unknown names raise a ValueError listing the known ones."""
    if name not in _RECIPES:
        raise ValueError(f"Unknown method {name!r}; available methods: {', '.join(available_methods())}")
    return _RECIPES[name]


def available_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return sorted(_RECIPES)


def recipe_for_model_type(model_type: str) -> Recipe | None:
    """The recipe whose registered config has `model_type` (None when no recipe has it)."""
    for recipe in _RECIPES.values():
        if any(config_class.model_type == model_type for config_class, _, _ in recipe.registrations):
            return recipe
    return None


def build_model(
    method: str,
    model: str | None = None,
    image_size: int | None = None,
    model_overrides: dict | None = None,
    method_arguments: Any = None,
    from_scratch: bool = False,
) -> PreTrainedModel:
    """The model ``hf-ssl pretrain --method <method> --model <model>`` would train, in Python.

    Args:
        method: a registered method (`available_methods()`).
        model: preset, transformers folder / Hub id or ``timm/<name>`` (default: the recipe's).
        image_size: input side (default: the recipe's for that backbone).
        model_overrides: config fields to change.
        method_arguments: an instance of the recipe's `arguments_class` (default: its defaults).
        from_scratch: ignore a checkpoint's weights (random init from its config).
    """
    from hf_ssl.backbones import load_pretrained_backbone, resolve_backbone

    recipe = get_recipe(method)
    model = model or recipe.default_model
    image_size = image_size or recipe.image_size_for(model)
    backbone = resolve_backbone(model, image_size, from_scratch=from_scratch)
    context = BuildContext(
        backbone=backbone,
        image_size=image_size,
        model_overrides=dict(model_overrides or {}),
        method_arguments=method_arguments if method_arguments is not None else recipe.method_arguments_defaults(),
    )
    built = recipe.build_model(context)
    if backbone.weights is not None:
        built.load_backbone_weights(load_pretrained_backbone(backbone.nested(), backbone.weights))
    return built
