"""Built-in architectures, built from scratch with `GraphBuilder` (randomly initialised).

    from thomas_cli.zoo import ZOO, build
    g = build("mobilenet_v2", num_classes=10, size=160, width=0.5, seed=0)

Every model takes one input "input" (N,3,size,size) with ImageNet preprocessing
(x = (u8/255 - mean)/std) and produces "logits" (N, num_classes). Node names follow
torchvision's module names (so parameters are named like torchvision's state_dict keys,
e.g. "features.0.0.weight"), except alexnet_bvlc which uses Caffe's layer names.

Trainable parameter counts at 224x224, 1000 classes, width 1 (= torchvision's
sum(p.numel() for p in model.parameters())):
    alexnet 61,100,840   alexnet_bvlc 60,965,224   mobilenet_v1 4,231,976
    mobilenet_v2 3,504,872   mobilenet_v3_small 2,542,856

Notes on choices:
  * alexnet: torchvision's AlexNet has AdaptiveAvgPool2d((6, 6)) between features and
    classifier. We have no adaptive pooling op, so the f x f feature map the features
    produce at the given `size` is flattened directly into Linear(256*f*f, 4096). At 224
    (f = 6) this is exactly torchvision's network (the adaptive pool is then an identity);
    at other sizes the first classifier layer changes width instead of the feature map
    being resampled. f is computed from `size` (conv 11/4/2, three 3/2 max pools):
    f = 1 for sizes 63..94, 2 for 95..126, ..., 6 for 223..254; the smallest valid size is 63.
  * alexnet_bvlc: Caffe's bvlc_alexnet (227 in Caffe; at 224 its ceil-mode pools also give
    6x6); pools use ceil_mode, conv2/4/5 have groups=2, LRN(5, 1e-4, 0.75, 1) after relu1
    and relu2. Same flatten-into-fc6 rule (f = 6 at 224 and 227, 2 at 72); smallest valid size 55.
  * mobilenet_v1: width scales every channel count c to max(8, int(c * width)) (TF-slim /
    Keras rule), the classifier is Linear(int(1024 * width), classes) and has no dropout.
    BN eps 1e-5, momentum 0.1 (PyTorch defaults).
  * The mobilenets accept any size >= 32 (their total stride). The AlexNets take no width
    multiplier (width must be 1.0).
  * mobilenet_v2 / mobilenet_v3_small follow torchvision exactly (config tables,
    _make_divisible, BN eps/momentum, dropout 0.2, init); GAP stands in for
    AdaptiveAvgPool2d(1) followed by Flatten.
"""
from __future__ import annotations

import math
from typing import Callable

from device_agent.model.builder import IMAGENET_PREPROCESS, GraphBuilder, default_labels
from device_agent.errors import ModelError
from device_agent.model.graph import Graph

__all__ = ["ZOO", "DESCRIPTIONS", "build", "make_divisible", "MIN_SIZE"]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's _make_divisible."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def _out(n: int, k: int, s: int, p: int, ceil: bool = False) -> int:
    """Output length of a conv/pool window (torch rule for ceil_mode: the last window
    must start inside the input or the left padding)."""
    num = n + 2 * p - k
    if num < 0:
        return 0
    o = (-(-num // s) if ceil else num // s) + 1
    if ceil and (o - 1) * s >= n + p:
        o -= 1
    return o


def _alexnet_feature_size(size: int) -> int:
    h = _out(size, 11, 4, 2)
    h = _out(h, 3, 2, 0) if h >= 3 else 0
    h = _out(h, 5, 1, 2)
    h = _out(h, 3, 2, 0) if h >= 3 else 0
    h = _out(h, 3, 2, 0) if h >= 3 else 0
    return h


def _bvlc_feature_size(size: int) -> int:
    h = _out(size, 11, 4, 0)
    for _ in range(3):                       # pool1, pool2, pool5; the 5x5/3x3 convs keep h
        h = _out(h, 3, 2, 0, ceil=True) if h >= 3 else 0
    return h


def _min_size(feature_size: Callable[[int], int]) -> int:
    s = 1
    while feature_size(s) < 1:
        s += 1
    return s


MIN_SIZE = {"alexnet": _min_size(_alexnet_feature_size), "alexnet_bvlc": _min_size(_bvlc_feature_size),
            "mobilenet_v1": 32, "mobilenet_v2": 32, "mobilenet_v3_small": 32}


def _builder(name: str, size: int, seed: int) -> GraphBuilder:
    return GraphBuilder(name, input_shape=(None, 3, size, size), preprocess=dict(IMAGENET_PREPROCESS), seed=seed)


# ------------------------------------------------------------------------------------ AlexNet
def _alexnet(b: GraphBuilder, num_classes: int, size: int, width: float) -> str:
    """torchvision.models.alexnet, with the adaptive pool replaced by a plain flatten."""
    init = "torch"          # torchvision's AlexNet keeps nn.Conv2d / nn.Linear default init
    x = b.input
    x = b.relu(b.conv(x, 64, 11, stride=4, pad=2, bias=True, name="features.0", init=init), "features.1")
    x = b.maxpool(x, 3, 2, name="features.2")
    x = b.relu(b.conv(x, 192, 5, pad=2, bias=True, name="features.3", init=init), "features.4")
    x = b.maxpool(x, 3, 2, name="features.5")
    x = b.relu(b.conv(x, 384, 3, pad=1, bias=True, name="features.6", init=init), "features.7")
    x = b.relu(b.conv(x, 256, 3, pad=1, bias=True, name="features.8", init=init), "features.9")
    x = b.relu(b.conv(x, 256, 3, pad=1, bias=True, name="features.10", init=init), "features.11")
    x = b.maxpool(x, 3, 2, name="features.12")
    x = b.flatten(x, name="flatten")
    x = b.dropout(x, 0.5, name="classifier.0")
    x = b.relu(b.linear(x, 4096, name="classifier.1", init=init), "classifier.2")
    x = b.dropout(x, 0.5, name="classifier.3")
    x = b.relu(b.linear(x, 4096, name="classifier.4", init=init), "classifier.5")
    return b.linear(x, num_classes, name="classifier.6", init=init)


def _alexnet_bvlc(b: GraphBuilder, num_classes: int, size: int, width: float) -> str:
    """Caffe's bvlc_alexnet (grouped convs, LRN, ceil-mode pools)."""
    init = "torch"
    x = b.input
    x = b.relu(b.conv(x, 96, 11, stride=4, pad=0, bias=True, name="conv1", init=init), "relu1")
    x = b.lrn(x, 5, 1e-4, 0.75, 1.0, name="norm1")
    x = b.maxpool(x, 3, 2, ceil_mode=True, name="pool1")
    x = b.relu(b.conv(x, 256, 5, pad=2, groups=2, bias=True, name="conv2", init=init), "relu2")
    x = b.lrn(x, 5, 1e-4, 0.75, 1.0, name="norm2")
    x = b.maxpool(x, 3, 2, ceil_mode=True, name="pool2")
    x = b.relu(b.conv(x, 384, 3, pad=1, bias=True, name="conv3", init=init), "relu3")
    x = b.relu(b.conv(x, 384, 3, pad=1, groups=2, bias=True, name="conv4", init=init), "relu4")
    x = b.relu(b.conv(x, 256, 3, pad=1, groups=2, bias=True, name="conv5", init=init), "relu5")
    x = b.maxpool(x, 3, 2, ceil_mode=True, name="pool5")
    x = b.flatten(x, name="flatten")
    x = b.dropout(b.relu(b.linear(x, 4096, name="fc6", init=init), "relu6"), 0.5, name="drop6")
    x = b.dropout(b.relu(b.linear(x, 4096, name="fc7", init=init), "relu7"), 0.5, name="drop7")
    return b.linear(x, num_classes, name="fc8", init=init)


# ------------------------------------------------------------------------------------ MobileNet v1
_V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def _mobilenet_v1(b: GraphBuilder, num_classes: int, size: int, width: float) -> str:
    def ch(c):
        return max(8, int(c * width))

    x = b.conv(b.input, ch(32), 3, stride=2, name="features.0.0")
    x = b.relu(b.bn(x, name="features.0.1"), "features.0.2")
    for i, (c, s) in enumerate(_V1_BLOCKS, start=1):
        p = f"features.{i}"
        cin = b.channels(x)
        x = b.conv(x, cin, 3, stride=s, groups=cin, name=f"{p}.0")
        x = b.relu(b.bn(x, name=f"{p}.1"), f"{p}.2")
        x = b.conv(x, ch(c), 1, name=f"{p}.3")
        x = b.relu(b.bn(x, name=f"{p}.4"), f"{p}.5")
    x = b.flatten(b.gap(x, name="avgpool"), name="flatten")
    return b.linear(x, num_classes, name="classifier")


# ------------------------------------------------------------------------------------ MobileNet v2
_V2_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]   # t, c, n, s


def _conv_bn_act(b: GraphBuilder, x: str, out: int, k: int, stride: int, groups: int, act: str | None,
                 prefix: str, eps: float = 1e-5, momentum: float = 0.1) -> str:
    """torchvision's Conv2dNormActivation: prefix.0 conv (no bias), prefix.1 BN, prefix.2 act."""
    x = b.conv(x, out, k, stride=stride, groups=groups, name=f"{prefix}.0")
    x = b.bn(x, name=f"{prefix}.1", eps=eps, momentum=momentum)
    return b.act(x, act, name=f"{prefix}.2")


def _mobilenet_v2(b: GraphBuilder, num_classes: int, size: int, width: float) -> str:
    cin = make_divisible(32 * width, 8)
    last = make_divisible(1280 * max(1.0, width), 8)
    x = _conv_bn_act(b, b.input, cin, 3, 2, 1, "relu6", "features.0")
    i = 1
    for t, c, n, s in _V2_SETTING:
        cout = make_divisible(c * width, 8)
        for j in range(n):
            stride = s if j == 0 else 1
            p = f"features.{i}.conv"
            hidden = int(round(cin * t))
            y, k = x, 0
            if t != 1:
                y = _conv_bn_act(b, y, hidden, 1, 1, 1, "relu6", f"{p}.{k}")
                k += 1
            y = _conv_bn_act(b, y, hidden, 3, stride, hidden, "relu6", f"{p}.{k}")
            y = b.conv(y, cout, 1, name=f"{p}.{k + 1}")
            y = b.bn(y, name=f"{p}.{k + 2}")
            if stride == 1 and cin == cout:
                y = b.add(x, y, name=f"features.{i}.add")
            x, cin = y, cout
            i += 1
    x = _conv_bn_act(b, x, last, 1, 1, 1, "relu6", f"features.{i}")
    x = b.flatten(b.gap(x, name="avgpool"), name="flatten")
    x = b.dropout(x, 0.2, name="classifier.0")
    return b.linear(x, num_classes, name="classifier.1")


# ------------------------------------------------------------------------------------ MobileNet v3 small
# input, kernel, expanded, out, use_se, activation, stride  (torchvision, dilation 1, no reduced tail)
_V3_SMALL = [(16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
             (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
             (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
             (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1)]


def _mobilenet_v3_small(b: GraphBuilder, num_classes: int, size: int, width: float) -> str:
    bn = {"eps": 0.001, "momentum": 0.01}

    def adj(c):
        return make_divisible(c * width, 8)

    x = _conv_bn_act(b, b.input, adj(_V3_SMALL[0][0]), 3, 2, 1, "hardswish", "features.0", **bn)
    for i, (cin, k, exp, cout, se, act, stride) in enumerate(_V3_SMALL, start=1):
        cin, exp, cout = adj(cin), adj(exp), adj(cout)
        a = "hardswish" if act == "HS" else "relu"
        p = f"features.{i}.block"
        y, j = x, 0
        if exp != cin:
            y = _conv_bn_act(b, y, exp, 1, 1, 1, a, f"{p}.{j}", **bn)
            j += 1
        y = _conv_bn_act(b, y, exp, k, stride, exp, a, f"{p}.{j}", **bn)
        j += 1
        if se:
            sq = make_divisible(exp // 4, 8)
            s = b.gap(y, name=f"{p}.{j}.avgpool")
            s = b.conv(s, sq, 1, bias=True, name=f"{p}.{j}.fc1")
            s = b.relu(s, name=f"{p}.{j}.activation")
            s = b.conv(s, exp, 1, bias=True, name=f"{p}.{j}.fc2")
            s = b.hardsigmoid(s, name=f"{p}.{j}.scale_activation")
            y = b.mul(s, y, name=f"{p}.{j}.mul")
            j += 1
        y = _conv_bn_act(b, y, cout, 1, 1, 1, None, f"{p}.{j}", **bn)
        if stride == 1 and cin == cout:
            y = b.add(y, x, name=f"features.{i}.add")
        x = y
    last_in = b.channels(x)
    x = _conv_bn_act(b, x, 6 * last_in, 1, 1, 1, "hardswish", f"features.{len(_V3_SMALL) + 1}", **bn)
    x = b.flatten(b.gap(x, name="avgpool"), name="flatten")
    x = b.hardswish(b.linear(x, adj(1024), name="classifier.0"), name="classifier.1")
    x = b.dropout(x, 0.2, name="classifier.2")
    return b.linear(x, num_classes, name="classifier.3")


ZOO: dict[str, Callable[[GraphBuilder, int, int, float], str]] = {
    "alexnet": _alexnet,
    "alexnet_bvlc": _alexnet_bvlc,
    "mobilenet_v1": _mobilenet_v1,
    "mobilenet_v2": _mobilenet_v2,
    "mobilenet_v3_small": _mobilenet_v3_small,
}


DESCRIPTIONS: dict[str, str] = {
    "alexnet": "torchvision AlexNet (61.1M params at 224); f x f features flattened into the classifier",
    "alexnet_bvlc": "Caffe BVLC AlexNet: grouped convs, LRN, ceil-mode pools (61.0M params at 224)",
    "mobilenet_v1": "MobileNet v1, 13 depthwise-separable blocks, width multiplier (4.2M params)",
    "mobilenet_v2": "torchvision MobileNetV2: inverted residuals, ReLU6 (3.5M params)",
    "mobilenet_v3_small": "torchvision MobileNetV3-Small: SE blocks, HardSwish (2.5M params)",
}


def build(name: str, num_classes: int = 1000, size: int = 224, width: float = 1.0, seed: int = 0,
          labels: list[str] | None = None) -> Graph:
    """A freshly initialised zoo model as a validated Graph; ModelError (one line) on bad arguments."""
    if name not in ZOO:
        raise ModelError(f"unknown model '{name}' (known: {', '.join(sorted(ZOO))})")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if isinstance(size, bool) or not isinstance(size, int):
        raise ModelError(f"size must be an integer, got {size!r}")
    if size < MIN_SIZE[name]:
        raise ModelError(f"size {size} is too small for {name} (needs >= {MIN_SIZE[name]})")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ModelError(f"width must be a positive number, got {width!r}")
    if width != 1.0 and name in ("alexnet", "alexnet_bvlc"):
        raise ModelError(f"{name} has no width multiplier (width must be 1.0, got {width!r})")
    if labels is None:
        labels = default_labels(num_classes)
    elif len(labels) != num_classes:
        raise ModelError(f"{len(labels)} labels given for num_classes={num_classes}")
    b = _builder(name, size, seed)
    logits = ZOO[name](b, num_classes, size, float(width))
    meta = {"arch": name, "num_classes": num_classes, "size": size, "width": float(width), "seed": seed,
            "source": "thomas_cli.zoo (random init)"}
    return b.finish({"logits": logits}, labels=list(labels), meta=meta)
