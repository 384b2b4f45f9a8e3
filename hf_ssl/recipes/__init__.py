"""Method registry: each method folder's ``recipe.py`` registers its method, found and imported here."""

from .base import (
    BuildContext,
    Figure,
    FinetunePreset,
    MethodCard,
    OptimizerDefaults,
    Preset,
    Recipe,
    ScheduleContext,
    StepContext,
    available_methods,
    build_model,
    get_recipe,
    load_method_folders,
    parameter_groups,
    recipe_for_model_type,
    register_auto_classes,
    register_recipe,
)

load_method_folders()

__all__ = [
    "BuildContext",
    "Figure",
    "FinetunePreset",
    "MethodCard",
    "OptimizerDefaults",
    "Preset",
    "Recipe",
    "ScheduleContext",
    "StepContext",
    "available_methods",
    "build_model",
    "get_recipe",
    "load_method_folders",
    "parameter_groups",
    "recipe_for_model_type",
    "register_auto_classes",
    "register_recipe",
]
