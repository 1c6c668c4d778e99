"""The three small reference networks trained by ``models/build.py``.

All take ``[N, 1, 32, 32]`` float32 images and return ``[N, 10]`` logits.

* ``DigitsCNN`` - plain Keras-style CNN:
  Conv(32, 3x3, valid) - ReLU - MaxPool(2) - Conv(64, 3x3, valid) - ReLU -
  MaxPool(2) - Flatten - Dense(64) - ReLU - Dropout(0.2) - Dense(10).
* ``ResNetSmall`` - CIFAR-style ResNet: stem Conv3x3(16)+BN+ReLU, three stages
  (16/32/64 channels, strides 1/2/2) of two ``BasicBlock``s each
  (Conv-BN-ReLU-Conv-BN + residual Add, 1x1 Conv+BN shortcut where the shape
  changes, ReLU after the Add), global average pool, Linear(64, 10).
* ``MobileNetV2Small`` - MobileNetV2-style: stem Conv3x3(16, stride 2, as in
  the paper; 32x32 -> 16x16)+BN+ReLU6, seven
  ``InvertedResidual`` blocks (1x1 expand Conv+BN+ReLU6, 3x3 depthwise Conv
  (groups=channels)+BN+ReLU6, 1x1 project Conv+BN, residual Add when stride is
  1 and channels match), 1x1 head Conv(128)+BN+ReLU6, global average pool,
  Linear(128, 10).

Convolutions followed by BatchNorm have no bias, as in the original papers.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10


class DigitsCNN(nn.Module):
    """Two conv layers, two dense layers; ~167k parameters."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3)  # 32 -> 30
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)  # 30 -> 15
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)  # 15 -> 13
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)  # 13 -> 6
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * 6 * 6, 64)
        self.relu3 = nn.ReLU()
        self.dropout = nn.Dropout(0.2)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(x)
        x = self.dropout(self.relu3(self.fc1(x)))
        return self.fc2(x)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 Conv+BN with an identity or 1x1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNetSmall(nn.Module):
    """Stem + 3 stages x 2 BasicBlocks (16/32/64 channels) + GAP + Linear."""

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64),
        blocks_per_stage: int = 2,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages = []
        in_ch = widths[0]
        for i, out_ch in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.flatten(self.pool(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        self.block = nn.Sequential(
            # expand
            nn.Conv2d(in_ch, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            # depthwise
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            # project (linear bottleneck: no activation)
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


# (expansion t, output channels c, repeats n, first stride s), as in the paper.
MOBILENETV2_SMALL_CONFIG: tuple[tuple[int, int, int, int], ...] = (
    (4, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
)


class MobileNetV2Small(nn.Module):
    """Stem + 7 inverted residual blocks + 1x1 head conv + GAP + Linear."""

    def __init__(
        self,
        config: tuple[tuple[int, int, int, int], ...] = MOBILENETV2_SMALL_CONFIG,
        stem_ch: int = 16,
        stem_stride: int = 2,
        head_ch: int = 128,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, stem_ch, 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(stem_ch),
            nn.ReLU6(),
        )
        blocks = []
        in_ch = stem_ch
        for t, c, n, s in config:
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Conv2d(in_ch, head_ch, 1, bias=False),
            nn.BatchNorm2d(head_ch),
            nn.ReLU6(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(head_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running stats excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
