"""Each module here registers one method in ``compress.distill.METHODS``."""
