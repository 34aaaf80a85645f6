"""Text utilities shared by the data and training stages."""
