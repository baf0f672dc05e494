"""Converters from other frameworks' detectors to MXNet checkpoints the server loads.

`predictor convert tfjs MODEL_JSON --out PREFIX` (`predictor.convert.checkpoint`)
translates a TensorFlow.js graph model (`predictor.convert.tfjs`), appends the
detector's decoding and NMS (`predictor.convert.heads`) and writes the
checkpoint with its class names and preprocessing declaration
(`predictor.convert.spec`). TensorFlow.js itself, run in node
(`predictor.convert.reference`), is the reference the tests compare with.
"""

from predictor.convert.errors import ConversionError

__all__ = ["ConversionError"]
