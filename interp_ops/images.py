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
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
