"""ImPoster: per-pair personalization of a text-to-image LDM with text and frequency guidance."""
from lit_models.imposter.model import ImPoster

__all__ = ["ImPoster"]
