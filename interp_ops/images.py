"""Images as report cells: PNG bytes of display-space arrays."""

from __future__ import annotations

import io

import numpy as np


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, C) or (H, W) floats in [0, 1] -> 8-bit PNG; one channel stays grey, three are RGB."""
    from PIL import Image

    pixels = np.round(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    # level 1: a third of the default's time (4 ms instead of 12 at 224x224, per LIME overlay), 7% larger
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
