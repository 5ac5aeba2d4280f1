"""compress: distill, prune, quantize, export and benchmark models from one YAML pipeline."""

__version__ = "0.1.0"
