"""The settings of a training run (a light module: the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (saved with each checkpoint)."""

    network: str = "ssd_300_compact_custom"
    edge: int = 300
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    # Passes over the training set's object crops that pretrain the feature
    # extractor as a classifier before detection training (0: none).
    pretrain_epochs: int = 3
    pretrain_learning_rate: float = 3e-3
    seed: int = 0
    workers: int = 2
    # Light augmentation: the synthetic scenes already vary colours, backgrounds,
    # scales and positions, and a from-scratch network leaves its early
    # "everything is background" plateau sooner on easier images.
    max_expand_ratio: float = 1.5
    expand_probability: float = 0.2
    crop_probability: float = 0.3
    colour_jitter: bool = False
    # Fine-tuning: start from these weights (an earlier run's last.params, same network
    # and classes) instead of random ones; no crop pretraining then.
    init_params: str | None = None
    # Background anchors every image contributes to the classification loss at least:
    # its most confident wrong ones. Beyond that the loss takes 3 per positive anchor, so
    # this is what an image with no object (a photo of nothing) teaches.
    min_hard_negatives: int = 8


@dataclass(frozen=True)
class VerifierConfig:
    """Everything that decides a crop verifier's training (`predictor.training.train_verifier`)."""

    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    scenes_per_set: int = 4000
    """At most this many scenes of each labelled set (the first ones)."""
    views_per_folder: int = 450
    """About this many random views of each photo folder."""
