"""Pretraining an SSD's feature extractor as a classifier of object crops.

No pretrained backbone can be downloaded here, and a detector trained from
scratch spends most of its budget learning what strokes and corners look like
under the sparse signal of a few matched anchors per image. Classifying crops
is the same visual problem with a dense signal and small inputs: every crop
is a labelled example, and a 96-px crop costs a tenth of a 300-px scene. So
before detection training, the SSD's own `features` block (backbone and extra
layers) is trained here to tell, from a crop cut around each ground-truth box
(object at 25-90 % of the crop side, off-centre), which class it holds, or
"background" for crops that miss every object. Its weights then start the
detection training: the ImageNet-pretraining step of the usual recipe, on
the detector's own data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import mxnet as mx
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from predictor.data import Dataset, ImageRecord
from predictor.runtime.imaging import to_tensor

CROP_EDGE = 96
"""Side of the crops in pixels: the stride-32 features are then 3x3 cells."""

_SMALLEST_SHARE, _LARGEST_SHARE = 0.25, 0.9  # object's longer side over the crop side
_BACKGROUND_TRIES = 10
_MAX_BACKGROUND_OVERLAP = 0.1  # share of any object's box a background crop may cover

Crops = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


class CropClassifier(mx.gluon.HybridBlock):  # type: ignore[misc]
    """An SSD's `features` block, global-average-pooled per feature map, and a linear layer."""

    def __init__(self, features: mx.gluon.HybridBlock, class_count: int) -> None:
        super().__init__()
        with self.name_scope():
            self.features = features
            self.output = mx.gluon.nn.Dense(class_count + 1)  # +1: background is class 0

    def hybrid_forward(self, F: object, x: mx.nd.NDArray) -> mx.nd.NDArray:
        """Class scores (background first) for a batch of crops."""
        pooled = [F.mean(feature, axis=(2, 3)) for feature in self.features(x)]  # type: ignore[attr-defined]
        return self.output(F.concat(*pooled, dim=1))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PretrainResult:
    """What pretraining achieved, for the run's history."""

    epochs: int
    train_accuracy: float
    val_accuracy: float | None
    seconds: float


def pretrain_features(
    features: mx.gluon.HybridBlock,
    train_set: Dataset,
    val_set: Dataset | None,
    *,
    epochs: int,
    learning_rate: float,
    seed: int,
    workers: int,
    batch_size: int = 64,
    progress: bool = True,
) -> PretrainResult:
    """Train ``features`` in place as a crop classifier of ``train_set``'s objects."""
    started = time.monotonic()
    classifier = CropClassifier(features, len(train_set.classes))
    classifier.output.initialize(mx.init.Xavier())
    classifier.hybridize(static_alloc=True, static_shape=True)
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    trainer = mx.gluon.Trainer(
        classifier.collect_params(), "adam", {"learning_rate": learning_rate, "wd": 1e-4}
    )
    rng = np.random.default_rng([seed, 1_000_003])
    accuracy = math.nan
    with ThreadPoolExecutor(workers, thread_name_prefix="crops") as pool:
        crops_per_epoch = _count_crops(train_set)
        steps_per_epoch = max(1, crops_per_epoch // batch_size)
        total_steps = steps_per_epoch * epochs
        step = 0
        for epoch in range(epochs):
            correct = seen = 0
            bar = tqdm(
                _batches(pool, train_set, rng, batch_size),
                total=steps_per_epoch,
                desc=f"pretrain {epoch + 1}/{epochs}",
                unit="batch",
                disable=not progress,
                dynamic_ncols=True,
            )
            for images, labels in bar:
                # Cosine decay from the peak, no warm-up: the loss is dense and well scaled.
                trainer.set_learning_rate(
                    learning_rate * 0.5 * (1 + math.cos(math.pi * step / total_steps))
                )
                data, target = mx.nd.array(images), mx.nd.array(labels)
                with mx.autograd.record():
                    scores = classifier(data)
                    loss = loss_fn(scores, target)
                loss.backward()
                trainer.step(len(labels))
                step += 1
                correct += int((scores.argmax(axis=1) == target).sum().asscalar())
                seen += len(labels)
                bar.set_postfix(
                    loss=f"{float(loss.mean().asscalar()):.3f}", acc=f"{correct / seen:.3f}"
                )
            bar.close()
            accuracy = correct / max(seen, 1)
        val_accuracy = (
            _accuracy(classifier, pool, val_set, rng, batch_size) if val_set is not None else None
        )
    return PretrainResult(epochs, accuracy, val_accuracy, round(time.monotonic() - started, 1))


def _accuracy(
    classifier: CropClassifier,
    pool: ThreadPoolExecutor,
    dataset: Dataset,
    rng: np.random.Generator,
    batch_size: int,
) -> float:
    correct = seen = 0
    for images, labels in _batches(pool, dataset, rng, batch_size):
        scores = classifier(mx.nd.array(images))
        correct += int((scores.argmax(axis=1).asnumpy() == labels).sum())
        seen += len(labels)
    return correct / max(seen, 1)


def _count_crops(dataset: Dataset) -> int:
    # One crop per object plus one background crop per image.
    return sum(len(dataset.targets(record)) + 1 for record in dataset.images)


def _batches(
    pool: ThreadPoolExecutor, dataset: Dataset, rng: np.random.Generator, batch_size: int
) -> Iterator[Crops]:
    """Shuffled batches of crops from every image of ``dataset``, cut on the pool."""
    order = rng.permutation(len(dataset.images))
    seeds = rng.integers(0, 2**63, size=len(order))
    images: list[npt.NDArray[np.float32]] = []
    labels: list[float] = []
    ahead = max(2, batch_size // 2)  # images in flight: about two batches of crops
    pending = [
        pool.submit(crops_of, dataset, dataset.images[int(order[i])], int(seeds[i]))
        for i in range(min(ahead, len(order)))
    ]
    next_index = len(pending)
    while pending:
        crops, crop_labels = pending.pop(0).result()
        if next_index < len(order):
            record = dataset.images[int(order[next_index])]
            pending.append(pool.submit(crops_of, dataset, record, int(seeds[next_index])))
            next_index += 1
        images.extend(crops)
        labels.extend(crop_labels.tolist())
        while len(images) >= batch_size:
            batch = np.stack(images[:batch_size])
            batch_labels = np.asarray(labels[:batch_size], dtype=np.float32)
            del images[:batch_size], labels[:batch_size]
            yield batch, batch_labels


@dataclass(frozen=True)
class Window:
    """A square region of an image, in pixels; it may reach past the image's edges."""

    left: float
    top: float
    side: float


def object_window(box: npt.NDArray[np.float64], rng: np.random.Generator) -> Window:
    """A square holding the whole box, off-centre, the box's longer side 25-90 % of it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    longer = max(x2 - x1, y2 - y1, 1.0)
    side = longer / rng.uniform(_SMALLEST_SHARE, _LARGEST_SHARE)
    left = x1 - rng.uniform(0, side - (x2 - x1))
    top = y1 - rng.uniform(0, side - (y2 - y1))
    return Window(left, top, side)


def background_window(
    boxes: npt.NDArray[np.float64], width: int, height: int, rng: np.random.Generator
) -> Window | None:
    """A square inside the image covering at most 10 % of any box, or None if none is found."""
    areas = np.maximum(1.0, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    for _ in range(_BACKGROUND_TRIES):
        side = rng.uniform(0.1, 0.5) * min(width, height)
        left, top = rng.uniform(0, width - side), rng.uniform(0, height - side)
        overlap_w = np.minimum(boxes[:, 2], left + side) - np.maximum(boxes[:, 0], left)
        overlap_h = np.minimum(boxes[:, 3], top + side) - np.maximum(boxes[:, 1], top)
        overlap = np.clip(overlap_w, 0, None) * np.clip(overlap_h, 0, None)
        if np.all(overlap / areas <= _MAX_BACKGROUND_OVERLAP):
            return Window(left, top, side)
    return None


def cut(pixels: npt.NDArray[np.uint8], window: Window) -> npt.NDArray[np.uint8]:
    """The window's pixels, edge-replicated where it leaves the image."""
    height, width = pixels.shape[:2]
    x0, y0 = round(window.left), round(window.top)
    size = max(2, round(window.side))
    pad = max(0, -x0, -y0, x0 + size - width, y0 + size - height)
    if pad:
        pixels = np.asarray(
            cv2.copyMakeBorder(pixels, pad, pad, pad, pad, cv2.BORDER_REPLICATE), dtype=np.uint8
        )
        x0, y0 = x0 + pad, y0 + pad
    return pixels[y0 : y0 + size, x0 : x0 + size]


def crops_of(
    dataset: Dataset, record: ImageRecord, seed: int
) -> tuple[list[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
    """Tensors of one crop around each object of an image and one of its background, and labels.

    Label 0 is background; object labels are class ids plus one.
    """
    read = cv2.imread(str(record.image_path), cv2.IMREAD_COLOR)
    if read is None:
        raise OSError(f"cannot read image {record.image_path}")
    pixels = np.asarray(read, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    targets = dataset.targets(record)
    boxes = targets[:, :4].astype(np.float64)
    windows = [object_window(box, rng) for box in boxes]
    labels = [float(class_id) + 1.0 for class_id in targets[:, 4]]
    background = background_window(boxes, pixels.shape[1], pixels.shape[0], rng)
    if background is not None:
        windows.append(background)
        labels.append(0.0)
    crops = [to_tensor(cut(pixels, window), CROP_EDGE) for window in windows]
    return crops, np.asarray(labels, dtype=np.float32)
