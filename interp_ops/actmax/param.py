"""Image parameterizations (Olah et al. 2017; Lucid/Lucent): what Adam moves, and how that becomes images.

Each returns ``(params, image_fn)`` as Lucent's do, where ``image_fn()`` gives a batch (B, C, H, W) in [0, 1].
Unlike Lucent's, the tensors live on the device the caller names, and each batch element's starting values come
from its own generator, so an element starts from the same point whether it is optimised alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

ImageFn = Callable[[], Tensor]

# Lucid's square root of the ImageNet colour covariance, columns scaled so the largest has norm 1: optimising in
# these decorrelated coordinates keeps Adam from producing the saturated, high-contrast colour noise it finds
# in raw RGB.
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION_NORMALIZED = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()
# Lucid's "magic constant": dividing the inverse FFT by it keeps the first images away from sigmoid saturation.
FFT_MAGIC = 4.0


def _draw_normal(shape: Sequence[int], generators: Sequence[torch.Generator], sd: float, device) -> Tensor:
    """(len(generators), *shape) normal values times sd, row i drawn from generators[i] on the CPU."""
    rows = [torch.randn(tuple(shape), generator=generator) for generator in generators]
    return (torch.stack(rows) * sd).to(device)


def pixel_image(
    shape: tuple[int, int, int], generators: Sequence[torch.Generator], device, sd: float = 0.01
) -> tuple[list[Tensor], ImageFn]:
    """One free value per pixel and channel (before the colour map and sigmoid of `image`)."""
    pixels = _draw_normal(shape, generators, sd, device).requires_grad_(True)
    return [pixels], lambda: pixels


def rfft2d_freqs(height: int, width: int) -> Tensor:
    """|frequency| of each coefficient of a real 2-D FFT of that size, shaped (height, width // 2 + 1)."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def fft_image(
    shape: tuple[int, int, int],
    generators: Sequence[torch.Generator],
    device,
    sd: float = 0.01,
    decay_power: float = 1.0,
) -> tuple[list[Tensor], ImageFn]:
    """Real and imaginary FFT coefficients scaled by 1 / f^decay_power.

    With the scaling, Adam's equal-sized steps move low frequencies most: renders come out smooth rather than as
    high-frequency patterns that excite the unit but show nothing (Lucid's fft_image; w // 2 + 1 columns for any
    width, where Lucent keeps one unused extra column for odd widths).
    """
    channels, height, width = shape
    freqs = rfft2d_freqs(height, width)
    spectrum = _draw_normal((channels, *freqs.shape, 2), generators, sd, device).requires_grad_(True)
    # the inverse FFT is linear, so Lucid's division by FFT_MAGIC is folded into the scale
    scale = (1.0 / torch.clamp(freqs, min=1.0 / max(height, width)) ** decay_power / FFT_MAGIC)[..., None].to(device)

    def image_fn() -> Tensor:
        coefficients = torch.view_as_complex(spectrum * scale)
        return torch.fft.irfftn(coefficients, s=(height, width), norm="ortho")

    return [spectrum], image_fn


PARAMETERIZATIONS = {"fft": fft_image, "pixel": pixel_image}


def decorrelated_color(images: Tensor) -> Tensor:
    """Map decorrelated coordinates (B, 3, H, W) to RGB with Lucid's colour matrix.

    A batched matmul over flattened pixels: on CPU it is some 20x faster than the equivalent 1x1 convolution.
    """
    matrix = COLOR_CORRELATION_NORMALIZED.to(images.device, images.dtype)
    return (matrix @ images.flatten(2)).view(images.shape)


def image(
    shape: tuple[int, int, int],
    generators: Sequence[torch.Generator],
    device,
    param: str = "fft",
    decorrelate: bool = True,
) -> tuple[list[Tensor], ImageFn]:
    """A batch of len(generators) images of shape (C, H, W) in [0, 1] through `param`, then colour and sigmoid.

    Colour decorrelation needs three channels; with one channel (or any count but 3) there is no colour to
    decorrelate and `decorrelate` does nothing.
    """
    params, raw = PARAMETERIZATIONS[param](shape, generators, device)
    if decorrelate and shape[0] == 3:
        return params, lambda: torch.sigmoid(decorrelated_color(raw()))
    return params, lambda: torch.sigmoid(raw())
