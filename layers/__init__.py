"""Layers: one per file, forward and backward by hand over NumPy (CPU) or CuPy (GPU) arrays.

The bottom floor of the project: layers import nothing above them (``layers/backend.py`` says
where arrays live, ``layers/cuda`` holds the GPU kernels). Import a layer from its own module
(``from layers.conv import Conv2D``); this package imports none of them, so that importing one
piece (the backend, the kernels) does not load every layer.
"""
