"""pairsmith.distill."""
