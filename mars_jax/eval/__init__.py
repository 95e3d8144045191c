"""Evaluation metrics: FID and CLIP score over pluggable features (``fid``, ``features``)."""
