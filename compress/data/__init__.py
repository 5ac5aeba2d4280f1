"""Datasets (registered by name) and the in-memory batching the training loop uses."""
