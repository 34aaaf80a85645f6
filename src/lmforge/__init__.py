"""lmforge: from raw multi-source text to a measured, monitored model service."""

__version__ = "0.1.0"
