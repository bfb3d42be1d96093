"""vostrack: one-shot video object segmentation from a single annotated frame."""

__version__ = "0.1.0"

# The Python API (vostrack/api.py), imported on first use: `import vostrack` stays light (no
# TensorFlow, no OpenCV) for tools that only read the version or a summary.
_API = ("Model", "SegmentJob", "load_model", "prepare")


def __getattr__(name: str):
    if name in _API:
        from vostrack import api

        return getattr(api, name)
    raise AttributeError(f"module 'vostrack' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
