"""The original BVLC GoogLeNet (Caffe model zoo), laid out with torchvision's parameter keys.

It differs from ``torchvision.models.googlenet`` in three places (see the weights README):
the inception "5x5" branch really is 5x5 (padding 2), LocalResponseNorm follows
``maxpool1`` and ``conv3``, and ``maxpool4`` is a 3x3 stride-2 pool. Caffe's biases are
stored as identity BatchNorms, which is exactly torchvision's ``BasicConv2d`` layout, so
the state dict of ``googlenet(aux_logits=False)`` (with 5x5 kernels) loads strictly.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.googlenet import BasicConv2d


class Inception(nn.Module):
    """One inception block: 1x1 | 1x1->3x3 | 1x1->5x5 | pool->1x1, concatenated on channels."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, kernel_size=1), BasicConv2d(c3r, c3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(cin, c5r, kernel_size=1), BasicConv2d(c5r, c5, kernel_size=5, padding=2))
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True), BasicConv2d(cin, pool_proj, kernel_size=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, cin, h, w] -> [N, c1 + c3 + c5 + pool_proj, h, w]
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class BVLCGoogLeNet(nn.Module):
    """Inception v1 as trained by BVLC; input: ImageNet-normalized RGB, output: 1000 logits."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.lrn1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.lrn2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.4)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, 3, H, W] (224x224 -> shapes in comments)
        x = self.maxpool1(self.conv1(x))  # [N, 64, 56, 56]
        x = self.lrn1(x)
        x = self.conv3(self.conv2(x))  # [N, 192, 56, 56]
        x = self.maxpool2(self.lrn2(x))  # [N, 192, 28, 28]
        x = self.inception3b(self.inception3a(x))  # [N, 480, 28, 28]
        x = self.maxpool3(x)  # [N, 480, 14, 14]
        x = self.inception4a(x)
        x = self.inception4b(x)
        x = self.inception4c(x)  # [N, 512, 14, 14]
        x = self.inception4d(x)
        x = self.inception4e(x)  # [N, 832, 14, 14]
        x = self.maxpool4(x)  # [N, 832, 7, 7]
        x = self.inception5b(self.inception5a(x))  # [N, 1024, 7, 7]
        x = torch.flatten(self.avgpool(x), 1)  # [N, 1024]
        return self.fc(self.dropout(x))  # [N, 1000]


__all__ = ["BVLCGoogLeNet", "Inception"]
