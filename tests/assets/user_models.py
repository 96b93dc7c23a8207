"""Models we did not shape around our demo: other input sizes, channel counts, layer names and outputs."""

from collections import OrderedDict

import torch
from torch import nn


class GrayNet(nn.Module):
    """1x28x28 grayscale, 10 classes, layer names unlike the demo's."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(1, 4, 3),
                act1=nn.ReLU(),
                pool=nn.MaxPool2d(2),
                conv2=nn.Conv2d(4, 6, 3),
                act2=nn.ReLU(),
            )
        )
        self.head = nn.Linear(6 * 11 * 11, 10)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


def gray_net():
    torch.manual_seed(0)
    return GrayNet()


class NaNNet(GrayNet):
    def forward(self, x):
        return super().forward(x) * float("nan")


def nan_net():
    return NaNNet()


class FeatureMapNet(GrayNet):
    """Returns a feature map instead of class scores: a wrong output shape for an audit."""

    def forward(self, x):
        return self.body(x)


def feature_map_net():
    return FeatureMapNet()


class TabularMLP(nn.Module):
    def __init__(self, features: int = 30):
        super().__init__()
        self.hidden = nn.Linear(features, 16)
        self.act = nn.ReLU()
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        return self.out(self.act(self.hidden(x)))


def tabular_mlp():
    torch.manual_seed(0)
    return TabularMLP()


class NotExportable(GrayNet):
    """Branches on a tensor's value: runs eagerly, but torch.export cannot trace it."""

    def forward(self, x):
        logits = super().forward(x)
        if logits.sum() > 0:
            return logits
        return -logits


def not_exportable():
    return NotExportable()


class Scale(nn.Module):
    """A learned per-channel gain with no ``reset_parameters()``: a random-init baseline cannot re-draw it."""

    def __init__(self, channels: int):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x):
        return x * self.gain


class ScaledGrayNet(GrayNet):
    """GrayNet with a ``Scale`` after its first convolution (auditing it with a random-init baseline warns)."""

    def __init__(self):
        super().__init__()
        layers = list(self.body.named_children())
        self.body = nn.Sequential(OrderedDict([layers[0], ("scale", Scale(4)), *layers[1:]]))


def scaled_gray_net():
    torch.manual_seed(0)
    return ScaledGrayNet()


class SkipGrayNet(GrayNet):
    """GrayNet whose second convolution has a skip connection around it (a residual block, as in ResNets)."""

    def __init__(self):
        super().__init__()
        self.skip_conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 13 * 13, 10)

    def forward(self, x):
        body = self.body
        x = body.pool(body.act1(body.conv1(x)))
        return self.head(torch.relu(self.skip_conv(x) + x).flatten(1))


def skip_gray_net():
    torch.manual_seed(0)
    return SkipGrayNet()
