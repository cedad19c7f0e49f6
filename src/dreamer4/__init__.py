"""Dreamer 4 (Hafner, Yan, Lillicrap 2025) as an orchestrated, reproducible pipeline."""

__version__ = "0.1.0"
