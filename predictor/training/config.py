"""The settings of a training run (a light module: the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (saved with each checkpoint)."""

    network: str = "ssd_300_mobilenet0.25_custom"
    edge: int = 300
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    workers: int = 2
    max_expand_ratio: float = 1.5
    expand_probability: float = 0.3
