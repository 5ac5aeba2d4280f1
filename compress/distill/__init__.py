"""Distillation methods, one small file each under ``compress.distill.methods``."""

from compress.distill.base import METHODS, MethodSpec, load_methods

__all__ = ["METHODS", "MethodSpec", "load_methods"]
