"""vostrack: one-shot video object segmentation from a single annotated frame."""

__version__ = "0.1.0"
