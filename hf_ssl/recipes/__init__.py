"""Method registry: one recipe module per method, registered on import."""

from .base import OptimizerDefaults, Recipe, available_methods, get_recipe, register_recipe
from . import splitmask  # noqa: E402,F401  (registers "splitmask" and "beit")

__all__ = ["OptimizerDefaults", "Recipe", "available_methods", "get_recipe", "register_recipe"]
