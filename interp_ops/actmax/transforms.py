"""Transformation robustness (Olah et al. 2017): each step shows the model a randomly padded, jittered, scaled
and rotated view of the render, so the render cannot rely on pixel-exact patterns the model happens to amplify.

Lucent applies each transform to the whole batch with one draw from NumPy's global state, one kornia call at a
time. Here every batch element gets its own parameters, computed from uniforms that the caller draws from that
element's generator, and a chain costs one pad and one bilinear resampling per step whatever its length: the
warps compose into one matrix per element, for every step at once, before the optimisation starts.

Geometry: coordinates are pixels measured from the canvas centre, and a warp is given by its inverse (where a
pixel of the result comes from), so a chain's inverse is the product of its warps' inverses in list order.
The model sees a window the size of the render, centred on the canvas: the render at its own scale (the scale
it is judged at afterwards), with the padding showing where a warp uncovers the border and zeros beyond it,
as in Lucent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Pad(NamedTuple):
    """Grow the canvas by `width` pixels of `fill` on every side."""

    width: int
    fill: float


class Warp(NamedTuple):
    """A random affine map: `inverse` turns `draws` uniforms in [0, 1) per element, shaped (..., draws), into
    (..., 3, 3) inverse maps in centred pixel coordinates."""

    draws: int
    inverse: Callable[[Tensor], Tensor]


Transform = Pad | Warp


def pad(width: int, fill: float = 0.5) -> Pad:
    """Grey padding, so that what a jitter or rotation uncovers looks like nothing in particular."""
    return Pad(width, fill)


def jitter(d: int) -> Warp:
    """Whole-pixel shifts from -(d // 2) to d - 1 - d // 2 in x and y, drawn separately.

    Lucent's d choices, but centred: Lucent shifts by 0..d-1, which is harmless there because its model sees the
    whole padded canvas, while a model that sees a window of the render's size would learn an off-centre render.
    """

    def inverse(uniforms: Tensor) -> Tensor:
        shift = torch.floor(uniforms * d) - d // 2
        return _translation(-shift)

    return Warp(2, inverse)


def random_scale(scales: Sequence[float]) -> Warp:
    """Scale about the centre by a factor chosen uniformly from `scales`."""
    choices = torch.tensor(scales, dtype=torch.float32)

    def inverse(uniforms: Tensor) -> Tensor:
        return _scaling(1.0 / _choose(choices, uniforms[..., 0]))

    return Warp(1, inverse)


def random_rotate(degrees: Sequence[float]) -> Warp:
    """Rotate about the centre by an angle in degrees chosen uniformly from `degrees`."""
    choices = torch.tensor(degrees, dtype=torch.float32) * (math.pi / 180.0)

    def inverse(uniforms: Tensor) -> Tensor:
        return _rotation(-_choose(choices, uniforms[..., 0]))

    return Warp(1, inverse)


# Lucent's standard_transforms (the rotation list without its five extra zeros).
STANDARD_TRANSFORMS: list[Transform] = [
    pad(12, fill=0.5),
    jitter(8),
    random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
    random_rotate(list(range(-10, 11))),
    jitter(4),
]
TRANSFORMS: dict[str, list[Transform]] = {"standard": STANDARD_TRANSFORMS, "none": []}


class TransformChain:
    """A list of transforms applied as one pad and one resampling per step; pads come before every warp."""

    def __init__(self, transforms: Sequence[Transform]):
        first_warp = next((i for i, t in enumerate(transforms) if isinstance(t, Warp)), len(transforms))
        if any(isinstance(t, Pad) for t in transforms[first_warp:]):
            raise ValueError(
                "transforms: put every pad before the first warp; a pad after a warp cannot be "
                "folded into one resampling"
            )
        self.pads = [t for t in transforms if isinstance(t, Pad)]
        self.warps = [t for t in transforms if isinstance(t, Warp)]
        self.draws = sum(warp.draws for warp in self.warps)

    def thetas(self, uniforms: Tensor, window: tuple[int, int]) -> Tensor:
        """`affine_grid` matrices (..., 2, 3) for uniforms (..., draws): output window -> normalized canvas."""
        height, width = window
        border = 2 * sum(p.width for p in self.pads)
        inverse = torch.eye(3).expand(*uniforms.shape[:-1], 3, 3)
        offset = 0
        for warp in self.warps:
            inverse = inverse @ warp.inverse(uniforms[..., offset : offset + warp.draws])
            offset += warp.draws
        # affine_grid's coordinates run over (-1, 1) on both the window and the canvas: rescale to pixels and back
        to_pixels = torch.diag(torch.tensor([width / 2, height / 2, 1.0]))
        to_canvas = torch.diag(torch.tensor([2 / (width + border), 2 / (height + border), 1.0]))
        return (to_canvas @ inverse @ to_pixels)[..., :2, :]

    def __call__(self, images: Tensor, theta: Tensor) -> Tensor:
        """The views of images (B, C, H, W) for matrices theta (B, 2, 3) from `thetas`; an empty chain is a no-op."""
        if not self.pads and not self.warps:
            return images
        canvas = images
        for p in self.pads:
            canvas = F.pad(canvas, [p.width] * 4, value=p.fill)
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        return F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _choose(choices: Tensor, uniforms: Tensor) -> Tensor:
    index = (uniforms * len(choices)).long().clamp_(max=len(choices) - 1)
    return choices[index]


def _identity(batch_shape: torch.Size) -> Tensor:
    return torch.eye(3).repeat(*batch_shape, 1, 1)


def _translation(shift: Tensor) -> Tensor:
    matrix = _identity(shift.shape[:-1])
    matrix[..., :2, 2] = shift
    return matrix


def _scaling(factor: Tensor) -> Tensor:
    matrix = _identity(factor.shape)
    matrix[..., 0, 0] = factor
    matrix[..., 1, 1] = factor
    return matrix


def _rotation(radians: Tensor) -> Tensor:
    matrix = _identity(radians.shape)
    cos, sin = torch.cos(radians), torch.sin(radians)
    matrix[..., 0, 0], matrix[..., 0, 1] = cos, -sin
    matrix[..., 1, 0], matrix[..., 1, 1] = sin, cos
    return matrix
