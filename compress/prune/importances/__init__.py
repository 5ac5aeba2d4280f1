"""Channel importances by name, one module each; an entry builds a torch-pruning importance."""
