"""Data modules and datasets."""
