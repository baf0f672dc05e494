"""Scoring a checkpoint on a labelled dataset, through the serving code path.

Images are decoded and preprocessed by `predictor.runtime.imaging` and run by
`predictor.runtime.model.Detector`, exactly as the server does, so a regression in
preprocessing (colour order, normalisation, resizing) or in box mapping shows
up as a lower mAP here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from predictor.config import DeviceSpec
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
) -> EvaluationReport:
    """VOC mAP@0.5 per class and overall, and COCO-style mAP@[.5:.95], of one checkpoint."""
    dataset = load_dataset(data_dir)
    detector = load_detectors(prefix, epoch, edge, DeviceSpec(), batch_size)[0]
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
