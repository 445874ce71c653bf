"""bench: load generator and benchmark harness for ML inference endpoints."""

__version__ = "0.1.0"
__all__ = ["__version__"]
