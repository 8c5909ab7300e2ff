"""pairsmith.service."""
