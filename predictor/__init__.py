"""predictor: a batched MXNet/GluonCV SSD object-detection inference server."""

__version__ = "0.1.0"
