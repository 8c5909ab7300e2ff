"""pairsmith.kernels."""
