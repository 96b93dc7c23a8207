"""Activation maximization finds what was planted: a unit wired to detect pure red renders red, units wired to
detect vertical and horizontal edges render structure of that orientation, and each render drives its unit
above every image of a real data set (the builtin shapes, run through the ONNX bundle as an audit would)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from interp_ops import onnx_bundle
from interp_ops.actmax import render_units, top_exemplars
from interp_ops.datasets import load_samples, to_model_input

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYER = "act"
RED, VERTICAL, HORIZONTAL = 0, 1, 2
MEAN, STD = 0.5, 0.25
SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])  # a vertical edge, dark to light


class PlantedDetectors(nn.Module):
    """One 3x3 conv with hand-set units and a ReLU ("act"), then global pooling and a linear head (for export).

    RED: +1 on R, -1 on G and B at the kernel centre, bias 1 so that grey input keeps it alive (on gray input
    it sees +1 - 1 - 1 of the one channel: unused). VERTICAL and HORIZONTAL: Sobel x and y on the channel sum.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.detect = nn.Conv2d(channels, 3, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.detect.weight.zero_()
            self.detect.bias.zero_()
            self.detect.weight[RED, :, 1, 1] = torch.tensor([1.0, -1.0, -1.0])[:channels]
            self.detect.bias[RED] = 1.0
            self.detect.weight[VERTICAL] = SOBEL_X.expand(channels, 3, 3)
            self.detect.weight[HORIZONTAL] = SOBEL_X.T.expand(channels, 3, 3)

    def forward(self, x):
        return self.head(self.act(self.detect(x)).mean(dim=(2, 3)))


def render(model, units, shape):
    return render_units(model, LAYER, units, input_shape=shape, mean=[MEAN], std=[STD], steps=256, seed=0)


def dataset_max(model, units, shape):
    """Each unit's highest activation over 64 builtin shapes scenes, through ONNX Runtime."""
    session = onnx_bundle.make_session(onnx_bundle.export_torch(model.eval(), shape, [LAYER]), "cpu")
    samples = load_samples("builtin:shapes?split=val&n=64", Path("."), seed=0)
    x = to_model_input(samples, shape, (0.0, 1.0), [MEAN], [STD])
    return top_exemplars(session, x, [LAYER], {LAYER: units})[LAYER].dataset_max


def edge_orientation(image: np.ndarray) -> tuple[float, float]:
    """(angle of the dominant gradient in degrees from the x axis, in -90..90; gradient energy in x over y) of
    the channel mean, from the structure tensor. Centred differences: one-sided ones sit half a pixel apart in
    x and y and tilt the estimate."""
    gy, gx = np.gradient(image.mean(axis=0))
    xx, yy, xy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    return float(0.5 * np.degrees(np.arctan2(2 * xy, xx - yy))), float(xx / yy)


@pytest.fixture(scope="module")
def rgb():
    model = PlantedDetectors(3)
    return model, render(model, [RED, VERTICAL, HORIZONTAL], (3, 64, 64))


@pytest.fixture(scope="module")
def gray():
    model = PlantedDetectors(1)
    return model, render(model, [VERTICAL, HORIZONTAL], (1, 28, 28))


def test_the_red_detector_renders_red(rgb):
    red, green, blue = rgb[1].images[RED].mean(axis=(1, 2))
    assert red > green + 0.3 and red > blue + 0.3, (red, green, blue)


@pytest.mark.parametrize("planted", ["rgb", "gray"])
def test_edge_detectors_render_edges_of_their_orientation(planted, request):
    renders = request.getfixturevalue(planted)[1]
    assert renders.images.shape[1:] == ((3, 64, 64) if planted == "rgb" else (1, 28, 28))
    rows = {unit: row for row, unit in enumerate(renders.unit_of_row)}
    vertical_angle, vertical_ratio = edge_orientation(renders.images[rows[VERTICAL]])
    horizontal_angle, horizontal_ratio = edge_orientation(renders.images[rows[HORIZONTAL]])
    assert abs(vertical_angle) < 15 and vertical_ratio > 1.5, (vertical_angle, vertical_ratio)
    assert abs(horizontal_angle) > 75 and horizontal_ratio < 1 / 1.5, (horizontal_angle, horizontal_ratio)


@pytest.mark.parametrize("planted", ["rgb", "gray"])
def test_renders_beat_every_dataset_image(planted, request):
    model, renders = request.getfixturevalue(planted)
    best_in_data = dataset_max(model, renders.units, (model.detect.in_channels, *renders.images.shape[2:]))
    assert np.all(renders.final_activation > best_in_data), (renders.final_activation, best_in_data)
