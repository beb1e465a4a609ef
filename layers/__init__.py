"""Layers with hand-written forward and backward passes (NCHW, NumPy or CuPy arrays)."""
