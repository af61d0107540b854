"""Demo architectures for the digits data: an MLP, a small CNN and a ResNet-style net."""
from __future__ import annotations

import torch
from torch import nn


class DigitsMLP(nn.Module):
    """LeNet-300-100 for 8x8 digits: 64 -> 300 -> 100 -> 10."""

    def __init__(self, hidden: tuple[int, int] = (300, 100), classes: int = 10):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(self.flatten(x)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def conv_bn(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DigitsCNN(nn.Module):
    """A small conv net for 8x8 digits: three conv blocks, two pools, two linear layers."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, widths[0]),
            conv_bn(widths[0], widths[1]),
            nn.MaxPool2d(2),                      # 8x8 -> 4x4
            conv_bn(widths[1], widths[2]),
            nn.MaxPool2d(2),                      # 4x4 -> 2x2
        )
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(widths[2] * 4, 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.features(x))
        return self.fc2(torch.relu(self.fc1(x)))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual addition (a 1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ConcatBlock(nn.Module):
    """Two branches whose outputs are concatenated along channels, then fused by a 1x1 conv."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch3x3 = conv_bn(channels, half, 3)
        self.branch_reduce = conv_bn(channels, half, 1)
        self.branch_deep = conv_bn(half, half, 3)
        self.fuse = nn.Sequential(nn.Conv2d(2 * half, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = torch.cat([self.branch3x3(x), self.branch_deep(self.branch_reduce(x))], dim=1)
        return torch.relu(self.fuse(merged) + x)


class DepthwiseBlock(nn.Module):
    """A depthwise 3x3 convolution followed by a pointwise 1x1 (MobileNet style)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.depthwise = conv_bn(in_channels, in_channels, 3, stride, groups=in_channels)
        self.pointwise = conv_bn(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class DigitsResNet(nn.Module):
    """ResNet-style net for 32x32 digits with residual, concat and depthwise blocks.

    Wide enough (about 250M MACs) that ONNX Runtime's time goes to arithmetic rather than to
    per-operator overhead, so removing channels shows up in the measured latency.
    """

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256), classes: int = 10):
        super().__init__()
        self.stem = conv_bn(1, widths[0])                             # 32x32
        self.layer1 = BasicBlock(widths[0], widths[0])                # 32x32
        self.layer2 = BasicBlock(widths[0], widths[1], stride=2)      # 16x16
        self.layer3 = ConcatBlock(widths[1])                          # 16x16
        self.layer4 = DepthwiseBlock(widths[1], widths[2], stride=2)  # 8x8
        self.layer5 = BasicBlock(widths[2], widths[2])                # 8x8
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[2], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in (self.layer1, self.layer2, self.layer3, self.layer4, self.layer5):
            x = block(x)
        return self.fc(self.flatten(self.pool(x)))
