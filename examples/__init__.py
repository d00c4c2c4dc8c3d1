"""Examples that run from a checkout of the repository (not installed with the package)."""
