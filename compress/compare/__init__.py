"""Comparison grids: methods x seeds (and temperature / alpha sweeps) from one pipeline file."""
