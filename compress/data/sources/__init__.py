"""The datasets, one module each; each registers its ``DatasetInfo`` in ``DATASETS``."""
