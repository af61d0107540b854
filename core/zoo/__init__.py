"""The built-in demo models: architectures, a registry, and weights and data in assets/ (core/zoo/assets)."""
from core.zoo.registry import BUILTINS, Builtin, builtin

__all__ = ["BUILTINS", "Builtin", "builtin"]
