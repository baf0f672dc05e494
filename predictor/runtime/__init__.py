"""MXNet and pixels: loading checkpoints, forward passes, decoding and preprocessing images.

Knows nothing of requests, queues or HTTP; `predictor.service` drives it.
"""
