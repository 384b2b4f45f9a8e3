"""What a pre-training method plugs into the training loop.

A `Recipe` bundles everything method-specific that `trainers/pretrain.py` needs: how to build
the model, which augmentation produces its inputs, the published optimizer defaults, and two
optional hooks (one before training, e.g. fitting SplitMask's patch tokenizer, one after each
optimizer step, e.g. an EMA teacher update). The loop itself never branches on the method name:
adding a method is one recipe module plus its model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel


@dataclass(frozen=True)
class OptimizerDefaults:
    """Published AdamW + cosine defaults of a method.

    Args:
        base_learning_rate: learning rate at `reference_batch_size`; the loop scales it linearly
            by `total_batch_size / reference_batch_size` (the rule the papers use).
        reference_batch_size: batch size that `base_learning_rate` refers to (256 or 512).
        weight_decay: AdamW weight decay, applied to parameters with >= 2 dimensions only.
        betas: AdamW betas.
        warmup_fraction: fraction of the total steps spent in linear warm-up.
        min_learning_rate_ratio: final learning rate of the cosine, as a fraction of the peak.
        gradient_clip_norm: max gradient norm (None disables clipping).
    """

    base_learning_rate: float = 1.5e-4
    reference_batch_size: int = 256
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.05
    min_learning_rate_ratio: float = 0.01
    gradient_clip_norm: float | None = 3.0


def _no_preparation(model: PreTrainedModel, image_batches: Iterable[torch.Tensor]) -> None:
    return None


def _no_step_hook(model: PreTrainedModel, step: int, total_steps: int) -> None:
    return None


@dataclass(frozen=True)
class Recipe:
    """A pre-training method as the training loop sees it.

    Args:
        name: the ``--method`` value.
        description: one line shown in ``--help`` and the model card.
        build_model: ``(model_preset, image_size, overrides) -> PreTrainedModel``; `model_preset`
            is a name from `hf_ssl.backbones` (e.g. ``"vit-small"``), `overrides` a dict of config
            fields the user set (``--model_overrides``).
        augmentation: name of an augmentation in `hf_ssl.transforms` (``"light"``,
            ``"simclr"``, ``"multicrop"``): how each image becomes model inputs.
        optimizer: published optimizer and schedule defaults.
        default_model: preset used when ``--model`` is not given.
        default_image_size: image size used when ``--image_size`` is not given.
        image_size_for_model: optional ``model_preset -> image size`` when the published
            resolution depends on the backbone (SimMIM: 192 for Swin, 224 for ViT); overrides
            `default_image_size`.
        prepare_model: called once before training with an iterable of pixel batches
            ``(B, C, H, W)`` from the training stream (fit a tokenizer, initialise a centre).
        after_optimizer_step: called after every optimizer step (EMA / momentum updates).
        is_masked_image_modeling: True for methods whose card shows a reconstruction figure.
        tags: extra Hub tags for the model card.
    """

    name: str
    description: str
    build_model: Callable[[str, int, dict], PreTrainedModel]
    augmentation: str = "light"
    optimizer: OptimizerDefaults = field(default_factory=OptimizerDefaults)
    default_model: str = "vit-small"
    default_image_size: int = 224
    image_size_for_model: Callable[[str], int] | None = None
    prepare_model: Callable[[PreTrainedModel, Iterable[torch.Tensor]], None] = _no_preparation
    after_optimizer_step: Callable[[PreTrainedModel, int, int], None] = _no_step_hook
    is_masked_image_modeling: bool = False
    tags: tuple[str, ...] = ()

    def image_size_for(self, model_preset: str) -> int:
        """The recipe's default input resolution for `model_preset`."""
        if self.image_size_for_model is not None:
            return self.image_size_for_model(model_preset)
        return self.default_image_size


_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    """Add `recipe` to the method registry (``--method recipe.name``)."""
    if recipe.name in _RECIPES and _RECIPES[recipe.name] is not recipe:
        raise ValueError(f"A recipe named {recipe.name!r} is already registered")
    _RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """Return the registered recipe `name`; unknown names raise a ValueError listing the known ones."""
    if name not in _RECIPES:
        raise ValueError(f"Unknown method {name!r}; available methods: {', '.join(available_methods())}")
    return _RECIPES[name]


def available_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return sorted(_RECIPES)
