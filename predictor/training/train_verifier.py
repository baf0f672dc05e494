"""Training the crop verifier (`predictor.training.verifier`) on a detector's own candidates.

A cascade's second stage learns from the first stage's mistakes. The trained
detector is run, through the serving code path, over:

- labelled scenes: each candidate it proposes (score at least
  `SCENE_MIN_SCORE`, its best `CANDIDATES_PER_IMAGE`) that overlaps an object
  at IoU 0.5 or more is a crop of that object's class, one that overlaps
  every object under 0.3 is background (in between: left out); each object
  adds two crops of its own box, shifted and scaled a little, and each scene
  two random boxes away from every object as background;
- folders of photographs with nothing to find: random views of each (15-100 %
  of its area, mirrored or not), where every candidate (score at least
  `PHOTO_MIN_SCORE`) and three random boxes are background. Each folder gives
  about `VerifierConfig.views_per_folder` views, however many photos it holds.

The crops are cut by `cut_crops` from the network input, as the exported
network cuts them. The verifier then trains as a classifier over background
and the detector's classes (Adam, cosine decay, brightness and colour
jitter), and is joined to the detector in one checkpoint (`export_verified`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from predictor.config import DeviceSpec
from predictor.data import Dataset, load_dataset
from predictor.detections import RawDetections
from predictor.errors import PredictorError
from predictor.runtime.imaging import find_images, prepare, preprocess
from predictor.runtime.model import Detector, load_detectors
from predictor.training.config import VerifierConfig
from predictor.training.detection_metrics import iou_matrix
from predictor.training.verifier import (
    CROP,
    build_verifier,
    cut_crops,
    export_verified,
    is_verified,
)

SCENE_MIN_SCORE = 0.05
PHOTO_MIN_SCORE = 0.01
CANDIDATES_PER_IMAGE = 30
_OBJECT_IOU, _BACKGROUND_IOU = 0.5, 0.3
_RANDOM_BOXES = (2, 3)  # per scene, per photo view
_BATCH = 8  # images per detector forward pass

Crops = npt.NDArray[np.float16]
Labels = npt.NDArray[np.int64]


class VerifierTrainingError(PredictorError):
    """The verifier cannot be trained as asked; the message says why."""


@dataclass
class CropSet:
    """Crops (float16 network-input values) and their labels (0 background, class + 1)."""

    crops: Crops
    labels: Labels

    @classmethod
    def join(cls, parts: Sequence[CropSet]) -> CropSet:
        """All crops of ``parts`` in one set."""
        if not parts:
            return cls(np.zeros((0, 3, CROP, CROP), np.float16), np.zeros(0, np.int64))
        return cls(
            np.concatenate([p.crops for p in parts]), np.concatenate([p.labels for p in parts])
        )

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class VerifierReport:
    """What was collected and how well the verifier learned it."""

    config: VerifierConfig
    scene_crops: int
    photo_crops: int
    background_share: float
    train_accuracy: float
    val_objects_accuracy: float | None
    """On the validation scenes' object crops: the right class."""
    val_background_accuracy: float | None
    """On the validation scenes' background crops: background."""
    seconds: float

    def to_json(self) -> dict[str, object]:
        """A plain dict for `json.dumps`."""
        return asdict(self)


def train_verifier(
    detector_prefix: Path,
    scene_dirs: Sequence[Path],
    photo_dirs: Sequence[Path],
    out_dir: Path,
    config: VerifierConfig,
    *,
    export_prefix: Path,
    val_dir: Path | None = None,
    progress: bool = True,
) -> VerifierReport:
    """Collect crops, train the verifier, and export the verified detector at ``export_prefix``.

    ``out_dir`` receives ``verifier.params`` and ``report.json``.
    """
    started = time.monotonic()
    for folder in [*scene_dirs, *photo_dirs, *([val_dir] if val_dir else [])]:
        if not folder.is_dir():
            raise VerifierTrainingError(f"{folder}: no such folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    mx.random.seed(config.seed)
    if is_verified(detector_prefix):
        raise VerifierTrainingError(
            f"{detector_prefix} already has a verifier: give the detector that "
            "`predictor train` exported"
        )
    detector = load_detectors(detector_prefix, 0, None, DeviceSpec(), _BATCH)[0]
    try:
        labelled = [*scene_dirs, *([val_dir] if val_dir else [])]
        scene_sets = [load_dataset(folder) for folder in labelled]
        for folder, dataset in zip(labelled, scene_sets, strict=True):
            if tuple(dataset.classes) != tuple(detector.classes):
                raise VerifierTrainingError(
                    f"{folder} labels the classes {list(dataset.classes)}, the detector "
                    f"predicts {list(detector.classes)}: they must be the same, in order"
                )
        scenes = CropSet.join(
            [
                scene_crops(detector, dataset, config.scenes_per_set, rng, progress)
                for dataset in scene_sets[: len(scene_dirs)]
            ]
        )
        photos = CropSet.join(
            [photo_crops(detector, d, config.views_per_folder, rng, progress) for d in photo_dirs]
        )
        val = (
            scene_crops(detector, scene_sets[-1], config.scenes_per_set, rng, progress)
            if val_dir is not None
            else None
        )
        edge = _edge(detector)
        class_count = len(detector.classes)
    finally:
        detector.close()
    training = CropSet.join([scenes, photos])
    if not len(training):
        raise VerifierTrainingError("no crops: the scene and photo folders hold no images")
    verifier = build_verifier(class_count)
    train_accuracy = _fit(verifier, training, config, rng, progress)
    val_objects = val_background = None
    if val is not None and len(val):
        predicted = _predict(verifier, val.crops)
        objects = val.labels > 0
        val_objects = _share(predicted[objects] == val.labels[objects])
        val_background = _share(predicted[~objects] == 0)
    verifier.save_parameters(str(out_dir / "verifier.params"))
    export_verified(detector_prefix, verifier, export_prefix, edge)
    report = VerifierReport(
        config,
        len(scenes),
        len(photos),
        _share(training.labels == 0),
        train_accuracy,
        val_objects,
        val_background,
        round(time.monotonic() - started, 1),
    )
    (out_dir / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n", "utf-8")
    return report


def scene_crops(
    detector: Detector,
    dataset: Dataset,
    limit: int,
    rng: np.random.Generator,
    progress: bool = True,
) -> CropSet:
    """Labelled crops of the detector's candidates and of the objects in ``dataset``'s scenes."""
    records = dataset.images[:limit]
    parts: list[CropSet] = []
    with ThreadPoolExecutor(2, thread_name_prefix="verifier-crops") as pool:
        bar = tqdm(total=len(records), desc="scene crops", unit="img", disable=not progress)
        for start in range(0, len(records), _BATCH):
            chunk = records[start : start + _BATCH]
            prepared = list(
                pool.map(
                    lambda r: prepare(
                        r.image_path.read_bytes(),
                        detector.preprocessing,
                        2**31 - 1,
                        require_jpeg=False,
                    ),
                    chunk,
                )
            )
            raws = detector.forward([p.tensor for p in prepared])
            for record, image, raw in zip(chunk, prepared, raws, strict=True):
                targets = dataset.targets(record)
                place = image.placement
                truth = targets[:, :4].astype(np.float32)
                truth[:, [0, 2]] = truth[:, [0, 2]] / place.scale_x + place.offset_x
                truth[:, [1, 3]] = truth[:, [1, 3]] / place.scale_y + place.offset_y
                boxes, labels = _scene_boxes(
                    raw, truth, targets[:, 4].astype(np.int64), rng, _edge(detector)
                )
                parts.append(CropSet(crops_of(image.tensor, boxes), labels))
            bar.update(len(chunk))
        bar.close()
    return CropSet.join(parts)


def photo_crops(
    detector: Detector,
    folder: Path,
    views_per_folder: int,
    rng: np.random.Generator,
    progress: bool = True,
) -> CropSet:
    """Background crops of the detector's candidates in random views of ``folder``'s photos."""
    files = find_images([folder])
    if not files:
        raise VerifierTrainingError(f"{folder} holds no photos")
    views_each = max(1, math.ceil(views_per_folder / len(files)))
    parts: list[CropSet] = []
    bar = tqdm(total=len(files) * views_each, desc=f"views of {folder.name}", unit="img",
               disable=not progress)  # fmt: skip
    for batch in _chunks(_views(files, views_each, rng), _BATCH):
        tensors = [preprocess(view, detector.preprocessing)[0] for view in batch]
        for tensor, raw in zip(tensors, detector.forward(tensors), strict=True):
            boxes = np.concatenate(
                [
                    _candidates(raw, PHOTO_MIN_SCORE),
                    _random_boxes(rng, _RANDOM_BOXES[1], _edge(detector)),
                ]
            )
            parts.append(CropSet(crops_of(tensor, boxes), np.zeros(len(boxes), np.int64)))
        bar.update(len(batch))
    bar.close()
    return CropSet.join(parts)


def crops_of(tensor: npt.NDArray[np.float32], boxes: npt.NDArray[np.float32]) -> Crops:
    """The verifier's crops around ``boxes`` (input pixels) of one network input."""
    if not len(boxes):
        return np.zeros((0, 3, CROP, CROP), np.float16)
    cut = cut_crops(mx.nd, mx.nd.array(tensor[np.newaxis]), mx.nd.array(boxes[np.newaxis]))
    return np.asarray(cut.asnumpy(), dtype=np.float16)


def _scene_boxes(
    raw: RawDetections,
    truth: npt.NDArray[np.float32],
    classes: Labels,
    rng: np.random.Generator,
    edge: int,
) -> tuple[npt.NDArray[np.float32], Labels]:
    candidates = _candidates(raw, SCENE_MIN_SCORE)
    boxes: list[npt.NDArray[np.float32]] = []
    labels: list[int] = []
    if len(candidates):
        overlaps = iou_matrix(candidates, truth) if len(truth) else np.zeros((len(candidates), 1))
        best = overlaps.max(axis=1)
        match = overlaps.argmax(axis=1)
        for box, overlap, index in zip(candidates, best, match, strict=True):
            if overlap >= _OBJECT_IOU:
                boxes.append(box)
                labels.append(int(classes[index]) + 1)
            elif overlap < _BACKGROUND_IOU:
                boxes.append(box)
                labels.append(0)
    for box, class_id in zip(truth, classes, strict=True):
        for _ in range(2):
            boxes.append(_jittered(box, rng))
            labels.append(int(class_id) + 1)
    for box in _random_boxes(rng, _RANDOM_BOXES[0], edge):
        if not len(truth) or iou_matrix(box[np.newaxis], truth).max() < 0.2:
            boxes.append(box)
            labels.append(0)
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def _edge(detector: Detector) -> int:
    return max(detector.preprocessing.width, detector.preprocessing.height)


def _candidates(raw: RawDetections, min_score: float) -> npt.NDArray[np.float32]:
    keep = (raw.scores >= min_score) & (raw.class_ids >= 0) & np.isfinite(raw.boxes).all(axis=1)
    return np.asarray(raw.boxes[keep][:CANDIDATES_PER_IMAGE], np.float32).reshape(-1, 4)


def _jittered(box: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """The box shifted by up to 10 % and scaled by 85-115 % of its size, per axis."""
    width, height = box[2] - box[0], box[3] - box[1]
    scale = rng.uniform(0.85, 1.15, 2)
    shift = rng.uniform(-0.1, 0.1, 2)
    cx = (box[0] + box[2]) / 2 + shift[0] * width
    cy = (box[1] + box[3]) / 2 + shift[1] * height
    half_w, half_h = width * scale[0] / 2, height * scale[1] / 2
    return np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h], np.float32)


def _random_boxes(rng: np.random.Generator, count: int, edge: int) -> npt.NDArray[np.float32]:
    """``count`` boxes of 4-50 % of the input's side per axis, anywhere in it."""
    sizes = rng.uniform(0.04, 0.5, (count, 2)) * edge
    corners = rng.uniform(0, 1, (count, 2)) * (edge - sizes)
    return np.asarray(np.concatenate([corners, corners + sizes], axis=1), dtype=np.float32)


def _views(
    files: Sequence[Path], views_each: int, rng: np.random.Generator
) -> Iterator[npt.NDArray[np.uint8]]:
    for path in files:
        read = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if read is None:
            raise VerifierTrainingError(f"cannot read photo {path}")
        photo = np.asarray(read, dtype=np.uint8)
        height, width = photo.shape[:2]
        for _ in range(views_each):
            area = rng.uniform(0.15, 1.0) * width * height
            aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
            view_w = max(8, min(width, round(math.sqrt(area * aspect))))
            view_h = max(8, min(height, round(math.sqrt(area / aspect))))
            left = int(rng.integers(0, width - view_w + 1))
            top = int(rng.integers(0, height - view_h + 1))
            view = photo[top : top + view_h, left : left + view_w]
            yield np.ascontiguousarray(view[:, ::-1] if rng.random() < 0.5 else view)


def _chunks(
    items: Iterator[npt.NDArray[np.uint8]], size: int
) -> Iterator[list[npt.NDArray[np.uint8]]]:
    chunk: list[npt.NDArray[np.uint8]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _fit(
    verifier: mx.gluon.HybridBlock,
    data: CropSet,
    config: VerifierConfig,
    rng: np.random.Generator,
    progress: bool,
) -> float:
    """Train ``verifier`` on ``data``; the last epoch's training accuracy."""
    verifier.initialize(mx.init.Xavier(magnitude=2))
    verifier.hybridize(static_alloc=True)
    trainer = mx.gluon.Trainer(
        verifier.collect_params(),
        "adam",
        {"learning_rate": config.learning_rate, "wd": config.weight_decay},
    )
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    steps_per_epoch = max(1, len(data) // config.batch_size)
    total = steps_per_epoch * config.epochs
    accuracy = math.nan
    for epoch in range(config.epochs):
        order = rng.permutation(len(data))
        correct = seen = 0
        bar = tqdm(range(steps_per_epoch), desc=f"verifier {epoch + 1}/{config.epochs}",
                   unit="batch", disable=not progress, dynamic_ncols=True)  # fmt: skip
        for step in bar:
            picked = order[step * config.batch_size : (step + 1) * config.batch_size]
            crops = _jitter(data.crops[picked].astype(np.float32), rng)
            labels = mx.nd.array(data.labels[picked])
            done = epoch * steps_per_epoch + step
            trainer.set_learning_rate(
                config.learning_rate * 0.5 * (1 + math.cos(math.pi * done / total))
            )
            with mx.autograd.record():
                scores = verifier(mx.nd.array(crops))
                loss = loss_fn(scores, labels)
            loss.backward()
            trainer.step(len(picked))
            correct += int((scores.argmax(axis=1) == labels).sum().asscalar())
            seen += len(picked)
            bar.set_postfix(
                loss=f"{float(loss.mean().asscalar()):.3f}", acc=f"{correct / seen:.3f}"
            )
        bar.close()
        accuracy = correct / max(1, seen)
    return accuracy


def _jitter(crops: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Contrast (80-120 %) and per-channel brightness (+-0.2 of a standard deviation)."""
    count = len(crops)
    contrast = rng.uniform(0.8, 1.2, (count, 1, 1, 1)).astype(np.float32)
    brightness = rng.uniform(-0.2, 0.2, (count, 3, 1, 1)).astype(np.float32)
    return crops * contrast + brightness


def _predict(verifier: mx.gluon.HybridBlock, crops: Crops) -> Labels:
    found = [
        verifier(mx.nd.array(crops[start : start + 512].astype(np.float32))).argmax(axis=1)
        for start in range(0, len(crops), 512)
    ]
    return np.asarray(np.concatenate([f.asnumpy() for f in found]), dtype=np.int64)


def _share(flags: npt.NDArray[np.bool_]) -> float:
    return float(flags.mean()) if flags.size else math.nan
