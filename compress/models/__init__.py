"""Model registry and the checkpoint format every stage hands to the next."""

from compress.models.checkpoint import ModelSpec, build_model, count_params, load_model, save_model
from compress.models.registry import MODELS

__all__ = ["MODELS", "ModelSpec", "build_model", "count_params", "load_model", "save_model"]
