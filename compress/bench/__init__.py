"""Latency measurement: timing statistics and inference backends."""
