"""Data loaders: interactions, items, MovieLens formats, synthetic demo data."""
