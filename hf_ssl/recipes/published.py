"""Published settings of a recipe, for docs/recipes.md: the published value and its source next to
a reader of hf-ssl's own default (see `hf_ssl.cli.recipe_docs`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PublishedSetting:
    """One row of a method's table in docs/recipes.md.

    Args:
        setting: what it is ("base learning rate").
        published: the paper's / official code's value, as text.
        source: paper section or official file.
        hf_ssl: ``recipe -> text``: hf-ssl's default, read from the recipe.
    """

    setting: str
    published: str
    source: str
    hf_ssl: Callable[[object], str]


@functools.lru_cache(maxsize=None)
def paper_config(method: str, model: str, image_size: int | None = None):
    """The config the recipe `method` builds for backbone `model` (on the meta device: no weights)."""
    from hf_ssl.backbones import resolve_backbone
    from .base import BuildContext, get_recipe

    recipe = get_recipe(method)
    image_size = image_size or recipe.image_size_for(model)
    context = BuildContext(backbone=resolve_backbone(model, image_size), image_size=image_size,
                           method_arguments=recipe.method_arguments_defaults())
    with torch.device("meta"):
        return recipe.build_model(context).config


def number(value) -> str:
    """Compact text for a number or a tuple of numbers (None: "none")."""
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(number(item) for item in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def learning_rate_rule(optimizer) -> str:
    return f"{number(optimizer.base_learning_rate)} x batch / {optimizer.reference_batch_size}"


__all__ = ["PublishedSetting", "learning_rate_rule", "number", "paper_config"]
