"""Method registry: one recipe module per method, registered on import."""

from .base import (
    BuildContext,
    Figure,
    MethodCard,
    OptimizerDefaults,
    Preset,
    Recipe,
    ScheduleContext,
    StepContext,
    available_methods,
    build_model,
    get_recipe,
    parameter_groups,
    recipe_for_model,
    recipe_for_model_type,
    register_auto_classes,
    register_recipe,
)
from . import dual_encoder, mae, simmim, splitmask  # noqa: E402,F401  (each module registers its method)
from . import barlow_twins, byol, moco_v3, simclr, simsiam, vicreg  # noqa: E402,F401  (joint-embedding family)
from . import dino  # noqa: E402,F401

__all__ = [
    "BuildContext",
    "Figure",
    "MethodCard",
    "OptimizerDefaults",
    "Preset",
    "Recipe",
    "ScheduleContext",
    "StepContext",
    "available_methods",
    "build_model",
    "get_recipe",
    "parameter_groups",
    "recipe_for_model",
    "recipe_for_model_type",
    "register_auto_classes",
    "register_recipe",
]
