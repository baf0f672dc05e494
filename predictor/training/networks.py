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


class AnchorError(ValueError):
    """A network's anchors leave part of its input uncovered."""


def build_ssd(network: str, classes: Sequence[str], edge: int) -> mx.gluon.HybridBlock:
    """An uninitialised GluonCV SSD ``*_custom`` network whose anchors cover ``edge`` pixels."""
    from gluoncv import model_zoo
    from gluoncv.model_zoo.ssd.ssd import get_ssd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preset = _MISCONFIGURED_PRESETS.get(network)
        if preset is None:
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
