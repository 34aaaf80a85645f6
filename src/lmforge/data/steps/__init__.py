"""Cleaning steps: each a generator over documents that yields the kept ones."""
