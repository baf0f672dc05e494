"""The one exception the converters raise."""

from __future__ import annotations

from predictor.errors import PredictorError


class ConversionError(PredictorError, ValueError):
    """The source model uses something the converter does not translate exactly.

    The message names the node and its op (or the weight, or the file), so that
    nobody has to guess; the converter never writes a graph it is unsure of.
    """
