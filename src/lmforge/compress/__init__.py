"""Compress the trained classifier (int8 dynamic quantisation) and measure what it costs."""

from lmforge.compress.quantize import COMPRESSION_METHODS, compress_model

__all__ = ["COMPRESSION_METHODS", "compress_model"]
