"""The mobile zoo's architectures in plain torch.nn, tiny (32x32 inputs, few channels), for the ONNX
import tests: the layer structure of the real networks (torchvision's), not their widths.

    net = build("shufflenet_v2", num_classes=10, seed=0)      # eval mode, non-trivial BN statistics

resnet18        BasicBlock x [2, 2, 2, 2], 7x7/2 stem + 3x3/2 max pool, downsample 1x1 convs
squeezenet1_1   Fire modules (squeeze 1x1, expand 1x1 | 3x3 concatenated), ceil_mode max pools,
                a conv classifier + ReLU + adaptive average pool
shufflenet_v2   x0.5 layout [4, 8, 4] blocks made [2, 2, 2]: chunk (Split), channel shuffle
                (view-transpose-view), x.mean([2, 3]) head
efficientnet    B0-style MBConv: expand, depthwise, squeeze-excitation (x.mean keepdim / AdaptiveAvgPool),
                swish as nn.SiLU and as x * sigmoid(x), residuals
mnasnet         MNASNet-style: separable stem, inverted residuals 3x3 / 5x5 with ReLU, x.mean([2, 3])
googlenet       GoogLeNet-style inception blocks: 1x1 | 1x1-3x3 | 1x1-5x5 | maxpool(ceil)-1x1, concat
"""
from __future__ import annotations

import torch
from torch import nn

ARCHS = ("resnet18", "squeezenet1_1", "shufflenet_v2", "efficientnet", "mnasnet", "googlenet")
SIZE = 32


def cbr(cin, cout, k, s=1, groups=1, act=nn.ReLU):
    """conv (no bias) -> BN -> act (None: no activation)"""
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


# ------------------------------------------------------------------------------ ResNet-18
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(cbr(cin, cout, 3, stride), cbr(cout, cout, 3, act=None))
        self.down = cbr(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + (x if self.down is None else self.down(x)))


def resnet18(num_classes):
    w = [8, 16, 24, 32]
    layers, cin = [], w[0]
    for i, c in enumerate(w):
        for j in range(2):
            layers.append(BasicBlock(cin, c, 2 if (j == 0 and i > 0) else 1))
            cin = c
    return nn.Sequential(cbr(3, w[0], 7, 2), nn.MaxPool2d(3, 2, 1), *layers, nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(cin, num_classes))


# ------------------------------------------------------------------------------ SqueezeNet 1.1
class Fire(nn.Module):
    def __init__(self, cin, squeeze, e1, e3):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, e1, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, e3, 3, padding=1), nn.ReLU())

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


def squeezenet1_1(num_classes):
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2), nn.ReLU(), pool(), Fire(16, 4, 8, 8), Fire(16, 4, 8, 8), pool(),
        Fire(16, 8, 16, 16), Fire(32, 8, 16, 16), pool(), Fire(32, 12, 24, 24), Fire(48, 12, 24, 24),
        Fire(48, 16, 32, 32), Fire(64, 16, 32, 32),
        nn.Dropout(0.5), nn.Conv2d(64, num_classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


# ------------------------------------------------------------------------------ ShuffleNetV2
def channel_shuffle(x, groups: int):
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(cbr(cin, cin, 3, stride, groups=cin, act=None), cbr(cin, half, 1))
        b_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(cbr(b_in, half, 1), cbr(half, half, 3, stride, groups=half, act=None),
                                     cbr(half, half, 1))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes, repeats=(2, 2, 2), chans=(8, 16, 32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(cbr(3, chans[0], 3, 2), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], chans[0]
        for n, c in zip(repeats, chans[1:4]):
            blocks += [ShuffleBlock(cin, c, 2)] + [ShuffleBlock(c, c, 1) for _ in range(n - 1)]
            cin = c
        self.stages = nn.Sequential(*blocks)
        self.conv5 = cbr(cin, chans[4], 1)
        self.fc = nn.Linear(chans[4], num_classes)

    def forward(self, x):
        x = self.conv5(self.stages(self.stem(x)))
        return self.fc(x.mean([2, 3]))


# ------------------------------------------------------------------------------ EfficientNet-B0 style
class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class SE(nn.Module):
    def __init__(self, c, squeeze, use_mean):
        super().__init__()
        self.use_mean = use_mean
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.act = nn.SiLU()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True) if self.use_mean else self.pool(x)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class MBConv(nn.Module):
    def __init__(self, cin, cout, expand, k, stride, use_mean):
        super().__init__()
        mid = cin * expand
        act = nn.SiLU if use_mean else Swish
        self.expand = cbr(cin, mid, 1, act=act) if expand != 1 else nn.Identity()
        self.dw = cbr(mid, mid, k, stride, groups=mid, act=act)
        self.se = SE(mid, max(1, cin // 4), use_mean)
        self.project = cbr(mid, cout, 1, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


def efficientnet(num_classes):
    # (expand, kernel, stride, out channels, repeats) of B0's first stages, narrowed
    cfg = [(1, 3, 1, 8, 1), (6, 3, 2, 12, 2), (6, 5, 2, 16, 2)]
    layers, cin, k = [], 8, 0
    for e, ks, s, c, n in cfg:
        for i in range(n):
            layers.append(MBConv(cin, c, e, ks, s if i == 0 else 1, use_mean=k % 2 == 0))
            cin, k = c, k + 1
    return nn.Sequential(cbr(3, 8, 3, 2, act=nn.SiLU), *layers, cbr(cin, 64, 1, act=nn.SiLU),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, num_classes))


# ------------------------------------------------------------------------------ MnasNet style
class InvRes(nn.Module):
    def __init__(self, cin, cout, k, stride, expand):
        super().__init__()
        mid = cin * expand
        self.layers = nn.Sequential(cbr(cin, mid, 1), cbr(mid, mid, k, stride, groups=mid), cbr(mid, cout, 1, act=None))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.layers(x) if self.residual else self.layers(x)


class MnasNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.stem = nn.Sequential(cbr(3, 8, 3, 2), cbr(8, 8, 3, groups=8), cbr(8, 8, 1, act=None))
        cfg = [(8, 12, 3, 2, 3, 2), (12, 16, 5, 2, 3, 2), (16, 24, 5, 2, 6, 1)]   # cin, cout, k, s, expand, n
        blocks = []
        for cin, cout, k, s, e, n in cfg:
            blocks += [InvRes(cin, cout, k, s, e)] + [InvRes(cout, cout, k, 1, e) for _ in range(n - 1)]
        self.blocks = nn.Sequential(*blocks)
        self.head = cbr(24, 64, 1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.head(self.blocks(self.stem(x))).mean([2, 3]))


# ------------------------------------------------------------------------------ GoogLeNet style
class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool_proj):
        super().__init__()
        self.b1 = cbr(cin, c1, 1)
        self.b2 = nn.Sequential(cbr(cin, c3r, 1), cbr(c3r, c3, 3))
        self.b3 = nn.Sequential(cbr(cin, c5r, 1), cbr(c5r, c5, 5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), cbr(cin, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


def googlenet(num_classes):
    return nn.Sequential(
        cbr(3, 8, 7, 2), nn.MaxPool2d(3, 2, ceil_mode=True), cbr(8, 8, 1), cbr(8, 16, 3),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Inception(16, 8, 8, 12, 2, 4, 4), Inception(28, 12, 8, 16, 4, 8, 8), nn.MaxPool2d(3, 2, ceil_mode=True),
        Inception(44, 16, 8, 16, 4, 8, 8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.4), nn.Linear(48, num_classes))


# ------------------------------------------------------------------------------ building
def build(name: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A seeded net in eval mode whose BatchNorms have non-trivial affine parameters and statistics."""
    torch.manual_seed(seed)
    make = {"resnet18": resnet18, "squeezenet1_1": squeezenet1_1, "shufflenet_v2": ShuffleNetV2,
            "efficientnet": efficientnet, "mnasnet": MnasNet, "googlenet": googlenet}[name]
    net = make(num_classes)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return net.eval()


def export(net: nn.Module, path, opset: int, batch: int = 1):
    """torch.onnx.export (TorchScript exporter), BN kept (TrainingMode.PRESERVE), free batch."""
    import warnings

    x = torch.randn(batch, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, x, str(path), dynamo=False, opset_version=opset,
                          training=torch.onnx.TrainingMode.PRESERVE, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path
