"""Generated, learnable image classification data (no files needed).

Each class c has a fixed smooth template T_c (a sum of random low-frequency sinusoids); an
image of class c is T_c + noise * N(0, 1) per pixel, so accuracy depends on ``noise``.
"""
import numpy as np


def class_templates(num_classes, channels, size, rng, waves=4):
    yy, xx = np.mgrid[0:size, 0:size] / size
    templates = np.zeros((num_classes, channels, size, size))
    for c in range(num_classes):
        for ch in range(channels):
            for _ in range(waves):
                fy, fx = rng.uniform(0.5, 3.0, size=2)
                phase = rng.uniform(0, 2 * np.pi)
                templates[c, ch] += np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
    return templates / np.sqrt(waves)


def make_dataset(num_train, num_val, channels, size, num_classes, noise=1.0, seed=0,
                 dtype=np.float32):
    """Returns ((x_train, y_train), (x_val, y_val)); x is (N, C, H, W), y int64 labels."""
    rng = np.random.default_rng(seed)
    templates = class_templates(num_classes, channels, size, rng)

    def split(n):
        labels = rng.integers(0, num_classes, size=n)
        images = templates[labels] + noise * rng.standard_normal((n, channels, size, size))
        return images.astype(dtype), labels.astype(np.int64)

    return split(num_train), split(num_val)
