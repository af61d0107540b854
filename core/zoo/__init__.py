"""The built-in demo models: their architectures, weights and data in core/zoo/assets/, and a registry."""
from core.zoo.registry import BUILTINS, Builtin, builtin

__all__ = ["BUILTINS", "Builtin", "builtin"]
