"""Method registry: one recipe module per method, registered on import."""

from .base import OptimizerDefaults, Recipe, available_methods, get_recipe, register_recipe
from . import mae, simmim, splitmask  # noqa: E402,F401  (each module registers its methods)

__all__ = ["OptimizerDefaults", "Recipe", "available_methods", "get_recipe", "register_recipe"]
