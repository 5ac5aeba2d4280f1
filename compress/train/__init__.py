"""The one training loop every training stage uses, and evaluation."""
