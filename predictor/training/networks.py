"""Building trainable GluonCV SSD networks, with anchors that cover the whole image.

GluonCV's `ssd_300_mobilenet0.25_*` presets declare anchor steps
``[8, 16, 32, 64, 100, 300]`` but take their first features at stride 16, so
the feature maps are 19, 10, 5, 3, 2 and 1 cells wide: with those steps every
anchor centre lies in the top-left half of a 300-px image, and objects in the
rest of the image have no anchor to be matched to. Training then sits on an
"everything is background" plateau. Such presets are rebuilt here with the
same layers and steps derived from the real feature-map sizes, and every
network is checked: `AnchorError` if its anchors do not span the input.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import mxnet as mx
import numpy as np

from predictor.errors import PredictorError

# Presets whose declared steps do not match their feature maps: the preset's own
# arguments (gluoncv/model_zoo/ssd/presets.py), to rebuild them with real steps.
_MISCONFIGURED_PRESETS: dict[str, dict[str, Any]] = {
    "ssd_300_mobilenet0.25_custom": {
        "name": "mobilenet0.25",
        "base_size": 300,
        "features": ["relu22_fwd", "relu26_fwd"],
        "filters": [256, 256, 128, 128],
        "sizes": [21, 45, 99, 153, 207, 261, 315],
        "ratios": [[1, 2, 0.5]] + [[1, 2, 0.5, 3, 1.0 / 3]] * 3 + [[1, 2, 0.5]] * 2,
    },
}


# Our own network, for training from scratch on a CPU (see `CompactFeatures`).
COMPACT_NETWORK = "ssd_300_compact_custom"
# Anchor sizes at 300 px: feature map i has square anchors of sizes[i] and
# sqrt(sizes[i] * sizes[i + 1]). Each map's smaller anchor is at least 2.5 times its
# stride (8, 16, 30, 60 px): a square object can sit at most half a stride off every
# anchor centre, and below about 2.7 strides no anchor then reaches the IoU of 0.5 that
# makes it a positive. The first version took its finest map at stride 16 with 21-px
# anchors (1.3 strides): a 50-px object centred in the image overlapped its best anchor
# at IoU 0.38, and the shipped model scored such a circle 0.02 where one shifted by
# 12 px scored 1.00.
_COMPACT_SIZES = [21, 45, 99, 153, 207, 261, 315, 330]
# Tall and wide (3, 1/3) anchors on the four finest maps: a "1" is a third as wide as tall.
_COMPACT_RATIOS = [[1, 2, 0.5, 3, 1.0 / 3]] * 4 + [[1, 2, 0.5]] * 3


class CompactFeatures(mx.gluon.HybridBlock):  # type: ignore[misc]
    """A plain convolutional feature extractor: seven maps, 38 to 1 cells wide at 300 px.

    MobileNet-0.25 starts from 8 channels and depthwise convolutions; from
    random weights it barely moves: on glyph crops it stayed at the class prior
    (24 % accuracy) after 150 Adam steps, where this stack reached 36 %, and an
    SSD on it reached only 0.23 mAP@0.5 after 10 epochs. Convolutions at stride
    1 followed by max-pooling keep thin strokes that stride-2 convolutions skip
    (ScratchDet's lesson for detectors trained from scratch). The price is
    speed: about 15-18 training images/s against MobileNet-0.25's 27 on 2 cores.
    """

    # After a stride-2 stem of 16 channels: a 3x3 convolution's output channels,
    # "pool" for a 2x2 max-pool, or "|" to emit a feature map (strides 8, 16 and 32).
    _BODY: tuple[int | str, ...] = (
        16, "pool", 32, "pool", 64, 64, "|", "pool", 128, 128, "|", "pool", 256, 256, "|",
    )  # fmt: skip
    # (1x1 channels, 3x3 stride-2 channels) of each extra map after the body.
    _EXTRA = ((128, 256), (64, 128), (64, 128), (64, 128))

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        nn = mx.gluon.nn
        with self.name_scope():
            self.stages = nn.HybridSequential()
            stage = nn.HybridSequential()
            stage.add(*_conv_bn_relu(16, 3, 2))
            for layer in self._BODY:
                if layer == "|":
                    self.stages.add(stage)
                    stage = nn.HybridSequential()
                elif layer == "pool":
                    stage.add(nn.MaxPool2D(2, 2, ceil_mode=True))
                else:
                    stage.add(*_conv_bn_relu(int(layer), 3, 1))
            for reduced, channels in self._EXTRA:
                stage = nn.HybridSequential()
                stage.add(*_conv_bn_relu(reduced, 1, 1), *_conv_bn_relu(channels, 3, 2))
                self.stages.add(stage)

    def hybrid_forward(self, F: object, x: mx.nd.NDArray) -> list[mx.nd.NDArray]:
        """The feature maps, finest first."""
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


def _conv_bn_relu(channels: int, kernel: int, stride: int) -> list[mx.gluon.HybridBlock]:
    nn = mx.gluon.nn
    return [
        nn.Conv2D(channels, kernel, strides=stride, padding=kernel // 2, use_bias=False),
        nn.BatchNorm(),
        nn.Activation("relu"),
    ]


class AnchorError(PredictorError, ValueError):
    """A network's anchors leave part of its input uncovered."""


def build_ssd(network: str, classes: Sequence[str], edge: int) -> mx.gluon.HybridBlock:
    """An uninitialised GluonCV SSD ``*_custom`` network whose anchors cover ``edge`` pixels."""
    from gluoncv import model_zoo
    from gluoncv.model_zoo.ssd.ssd import get_ssd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preset = _MISCONFIGURED_PRESETS.get(network)
        if network == COMPACT_NETWORK:
            net = _compact_ssd(classes, edge)
        elif preset is None:
            net = model_zoo.get_model(
                network, classes=list(classes), pretrained_base=False, transfer=None
            )
        else:
            probe = get_ssd(
                **preset,
                steps=[8, 16, 32, 64, 100, 300],
                classes=list(classes),
                dataset="",
                pretrained_base=False,
            )
            steps = [edge / size for size in feature_map_sizes(probe, edge)]
            net = get_ssd(
                **preset, steps=steps, classes=list(classes), dataset="", pretrained_base=False
            )
    return net


def _compact_ssd(classes: Sequence[str], edge: int) -> mx.gluon.HybridBlock:
    from gluoncv.model_zoo.ssd.ssd import SSD

    def build(steps: Sequence[float]) -> mx.gluon.HybridBlock:
        return SSD(
            None,
            edge,
            CompactFeatures,
            None,
            [size * edge / 300 for size in _COMPACT_SIZES],
            _COMPACT_RATIOS,
            list(steps),
            list(classes),
        )

    probe = build([edge / 2 ** (3 + i) for i in range(len(_COMPACT_RATIOS))])
    return build([edge / size for size in feature_map_sizes(probe, edge)])


def feature_map_sizes(net: mx.gluon.HybridBlock, edge: int) -> list[int]:
    """Width in cells of each feature map the SSD heads predict from."""
    with warnings.catch_warnings():
        # Parameters already initialised are left as they are (MXNet warns about each).
        warnings.simplefilter("ignore")
        net.initialize(force_reinit=False)
        features = net.features(mx.nd.zeros((1, 3, edge, edge)))
    return [int(f.shape[3]) for f in features]


def check_anchor_coverage(net: mx.gluon.HybridBlock, edge: int) -> None:
    """Raise `AnchorError` unless the anchors of every feature map span the input."""
    with mx.autograd.train_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, anchors = net(mx.nd.zeros((1, 3, edge, edge)))
    centres = anchors.asnumpy().reshape(-1, 4)[:, :2]
    if centres.size == 0 or float(np.max(centres)) < 0.75 * edge:
        raise AnchorError(
            f"anchor centres reach only {float(np.max(centres)):.0f} of {edge} pixels: "
            "objects beyond that cannot be learned"
        )
