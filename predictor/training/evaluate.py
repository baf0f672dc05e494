"""Scoring a checkpoint on a labelled dataset, through the serving code path.

Images are decoded and preprocessed by `predictor.runtime.imaging` and run by
`predictor.runtime.model.Detector`, exactly as the server does, so a regression in
preprocessing (colour order, normalisation, resizing) or in box mapping shows
up as a lower mAP here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from predictor.config import DeviceSpec, Settings
from predictor.data import load_dataset
from predictor.offline import detect_files
from predictor.runtime.model import load_detectors
from predictor.training.detection_metrics import (
    EvaluationReport,
    GroundTruth,
    Predictions,
    evaluate,
)

# Low enough to trace the whole precision/recall curve, as mAP requires.
EVALUATION_THRESHOLD = 0.01


def evaluate_checkpoint(
    prefix: Path,
    data_dir: Path,
    *,
    edge: int,
    epoch: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    dtype: str | None = None,
    engine: str = "mxnet",
) -> EvaluationReport:
    """VOC mAP@0.5 per class and overall, and COCO-style mAP@[.5:.95], of one checkpoint.

    ``dtype`` and ``engine`` are as the server's ``MODEL_DTYPE`` and ``MODEL_ENGINE``
    (`load_detectors`); None runs the checkpoint in the type it was written in.
    """
    dataset = load_dataset(data_dir)
    detector = load_detectors(prefix, epoch, edge, DeviceSpec(), batch_size, dtype, engine=engine)[
        0
    ]
    try:
        unknown = sorted(set(detector.classes) - set(dataset.classes))
        if unknown:
            raise ValueError(f"{prefix} predicts classes {unknown} that {data_dir} does not label")
        class_ids = {name: dataset.class_index(name) for name in detector.classes}
        files = [record.image_path for record in dataset.images]
        results = detect_files(
            files, detector, EVALUATION_THRESHOLD, 2**31 - 1, os.cpu_count() or 1
        )
        truths, predictions = [], []
        for record, result in tqdm(
            zip(dataset.images, results, strict=True),
            total=len(files),
            unit="img",
            disable=not progress,
        ):
            if result.error is not None:
                raise ValueError(f"{record.image_path}: {result.error}")
            targets = dataset.targets(record)
            truths.append(
                GroundTruth(targets[:, :4].astype(np.float64), targets[:, 4].astype(np.int64))
            )
            detections = result.detections
            predictions.append(
                Predictions(
                    boxes=np.array(
                        [(d.x, d.y, d.x + d.width, d.y + d.height) for d in detections],
                        dtype=np.float64,
                    ).reshape(-1, 4),
                    labels=np.array([class_ids[d.object_class] for d in detections], np.int64),
                    scores=np.array([d.probability for d in detections], dtype=np.float64),
                )
            )
    finally:
        detector.close()
    return evaluate(truths, predictions, dataset.classes)


@dataclass(frozen=True)
class FalseDetection:
    """A detection in a photo that holds nothing the model knows."""

    image: str
    object_class: str
    probability: float
    box: tuple[int, int, int, int]
    """x, y, width, height in the photo's pixels."""


@dataclass(frozen=True)
class NegativesReport:
    """What a checkpoint finds, above a threshold, in photos with nothing to find."""

    images: tuple[str, ...]
    threshold: float
    detections: tuple[FalseDetection, ...]
    highest: dict[str, float]
    """Per image: the highest probability of any detection (0.0 if none at all)."""

    @property
    def per_image(self) -> float:
        """False detections per image above the threshold."""
        return len(self.detections) / max(1, len(self.images))

    def to_json(self) -> dict[str, object]:
        """A plain dict for `json.dumps`."""
        return {
            "images": len(self.images),
            "threshold": self.threshold,
            "false_detections": len(self.detections),
            "false_detections_per_image": self.per_image,
            "highest_probability": self.highest,
            "detections": [
                {
                    "image": d.image,
                    "class": d.object_class,
                    "probability": d.probability,
                    "box": list(d.box),
                }
                for d in self.detections
            ],
        }

    def format_table(self) -> str:
        """One row per photo: detections above the threshold and the highest probability."""
        rows = [f"{'photo':<32} {'above ' + str(self.threshold):>10} {'highest':>8}"]
        for image in self.images:
            found = [d for d in self.detections if d.image == image]
            labels = ", ".join(f"{d.object_class} {d.probability:.2f}" for d in found)
            rows.append(f"{image:<32} {len(found):>10} {self.highest[image]:>8.3f}  {labels}")
        rows.append(
            f"{len(self.images)} photos, {len(self.detections)} false detections above "
            f"{self.threshold} ({self.per_image:.2f} per image)"
        )
        return "\n".join(rows)


def evaluate_negatives(
    prefix: Path,
    folder: Path,
    *,
    edge: int,
    epoch: int = 0,
    threshold: float = Settings.probability_threshold,
    batch_size: int = 8,
    dtype: str | None = None,
    engine: str = "mxnet",
) -> NegativesReport:
    """Every detection above ``threshold`` in the JPEG and PNG photos of ``folder``.

    The photos are meant to hold no object of the model's classes, so every detection
    counts as false. Raises ValueError if the folder has no photo. ``dtype`` and
    ``engine`` as in `evaluate_checkpoint`.
    """
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise ValueError(f"no .jpg or .png photos in {folder}")
    detector = load_detectors(prefix, epoch, edge, DeviceSpec(), batch_size, dtype, engine=engine)[
        0
    ]
    try:
        results = list(
            detect_files(files, detector, EVALUATION_THRESHOLD, 2**31 - 1, os.cpu_count() or 1)
        )
    finally:
        detector.close()
    detections: list[FalseDetection] = []
    highest: dict[str, float] = {}
    for path, result in zip(files, results, strict=True):
        if result.error is not None:
            raise ValueError(f"{path}: {result.error}")
        highest[path.name] = max((d.probability for d in result.detections), default=0.0)
        detections.extend(
            FalseDetection(path.name, d.object_class, d.probability, (d.x, d.y, d.width, d.height))
            for d in result.detections
            if d.probability > threshold
        )
    return NegativesReport(tuple(p.name for p in files), threshold, tuple(detections), highest)
