"""Structured (channel) pruning on top of torch-pruning's dependency graph."""
