"""Training GluonCV SSD `*_custom` networks on a dataset in any supported format.

One epoch: shuffled batches of box-safe augmented images (decoded and
augmented on a thread pool while the previous batch trains), SSD targets from
GluonCV's matcher, multibox loss with hard-negative mining, Adam with a linear
warm-up and cosine decay. After every epoch the network is exported to the
serving checkpoint format and scored on the validation set through the very
code path the server uses (`predictor.runtime.model.Detector`), so the reported mAP
is the mAP users get.

Every epoch also writes a resumable state (weights, optimiser state, epoch,
history); `--resume` continues from it with the same data order.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import mxnet as mx
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from predictor.checkpoint import Checkpoint, Preprocessing
from predictor.data import Dataset, ImageRecord, TrainAugment, load_dataset
from predictor.errors import PredictorError
from predictor.runtime.imaging import to_tensor
from predictor.training.config import TrainConfig
from predictor.training.networks import AnchorError, build_ssd, check_anchor_coverage

if TYPE_CHECKING:
    from predictor.training.detection_metrics import EvaluationReport

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
Batch = tuple[npt.NDArray[np.float32], list[npt.NDArray[np.float32]]]


class TrainingError(PredictorError):
    """Training cannot start or continue; the message says why."""


def _load_initial_weights(net: mx.gluon.HybridBlock, path: Path) -> None:
    """Fine-tuning's starting point; refuses weights of another network or class list."""
    if not path.is_file():
        raise TrainingError(f"cannot start from {path}: no such file")
    try:
        net.load_parameters(str(path))
    except (OSError, AssertionError, ValueError, mx.base.MXNetError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(
            f"cannot start from {path}: {first_line} (it must be a run's last.params "
            "for the same --network and classes)"
        ) from None


@dataclass
class TrainState:
    """Progress of a run; written after every epoch."""

    config: TrainConfig
    epoch: int = 0  # detection epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    pretrained: bool = False  # the crop-classifier pretraining is done
    pretraining: dict[str, Any] = field(default_factory=dict)  # its figures

    def save(self, path: Path) -> None:
        """Write as JSON, atomically."""
        payload = {
            "config": asdict(self.config),
            "epoch": self.epoch,
            "history": self.history,
            "pretrained": self.pretrained,
            "pretraining": self.pretraining,
        }
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> TrainState:
        """Read a state written by `save`."""
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                TrainConfig(**payload["config"]),
                payload["epoch"],
                payload["history"],
                bool(payload.get("pretrained", False)),
                dict(payload.get("pretraining", {})),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrainingError(f"cannot resume from {path}: {exc}") from None


def train(
    data_dir: Path,
    out_dir: Path,
    config: TrainConfig,
    *,
    val_dir: Path | None = None,
    resume: bool = False,
    export_prefix: Path | None = None,
    progress: bool = True,
) -> TrainState:
    """Train, validate every epoch, and export the final network next to ``out_dir``.

    Returns the final state; its history holds loss and validation mAP per epoch.
    """
    train_set = load_dataset(data_dir)
    val_set = load_dataset(val_dir) if val_dir else None
    if val_set is not None and val_set.classes != train_set.classes:
        raise TrainingError(
            f"{val_dir} has classes {val_set.classes}, {data_dir} has {train_set.classes}"
        )
    if not train_set.images:
        raise TrainingError(f"{data_dir} holds no images")
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE_FILE
    state = TrainState(config)
    if resume:
        if not state_path.is_file():
            raise TrainingError(f"nothing to resume: {state_path} does not exist")
        state = TrainState.load(state_path)
        config = state.config
    elif state_path.exists():
        raise TrainingError(f"{out_dir} already holds a run; pass --resume or use a new folder")

    mx.random.seed(config.seed)
    net = _build_network(config, train_set.classes)
    if resume and (out_dir / "last.params").is_file():
        net.load_parameters(str(out_dir / "last.params"))
    elif config.init_params is not None:
        _load_initial_weights(net, Path(config.init_params))
    if config.pretrain_epochs > 0 and not state.pretrained and config.init_params is None:
        state.pretraining = _pretrain(net, train_set, val_set, config, progress)
        net.save_parameters(str(out_dir / "last.params"))
        state.pretrained = True
        state.save(state_path)
    anchors = _anchors(net, config.edge)
    steps_per_epoch = math.ceil(len(train_set.images) / config.batch_size)
    schedule = _WarmupCosine(
        config.learning_rate,
        steps_per_epoch * config.warmup_epochs,
        steps_per_epoch * config.epochs,
    )
    trainer = mx.gluon.Trainer(
        net.collect_params(),
        "adam",
        {"learning_rate": config.learning_rate, "wd": config.weight_decay},
    )
    if resume and (out_dir / "last.states").is_file():
        trainer.load_states(str(out_dir / "last.states"))
    target_generator = _target_generator()
    loss_fn = _multibox_loss(config.min_hard_negatives)
    augment = TrainAugment(
        out_size=(config.edge, config.edge),
        max_expand_ratio=config.max_expand_ratio,
        expand_probability=config.expand_probability,
        crop_probability=config.crop_probability,
        jitter=config.colour_jitter,
    )

    with ThreadPoolExecutor(config.workers, thread_name_prefix="augment") as pool:
        for epoch in range(state.epoch, config.epochs):
            started = time.monotonic()
            rng = np.random.default_rng([config.seed, epoch])
            order = rng.permutation(len(train_set.images))
            batches = _batches(pool, train_set, order, config.batch_size, augment, rng)
            bar = tqdm(
                batches,
                total=steps_per_epoch,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                unit="batch",
                disable=not progress,
                dynamic_ncols=True,
            )
            totals = np.zeros(3)
            for step, (images, targets) in enumerate(bar):
                trainer.set_learning_rate(schedule(epoch * steps_per_epoch + step))
                losses = _train_step(
                    net, trainer, loss_fn, target_generator, anchors, images, targets
                )
                totals += losses
                mean = totals / (step + 1)
                bar.set_postfix(loss=f"{mean[0]:.3f}", cls=f"{mean[1]:.3f}", box=f"{mean[2]:.3f}")
            bar.close()
            net.save_parameters(str(out_dir / "last.params"))
            trainer.save_states(str(out_dir / "last.states"))
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "loss": float(totals[0] / steps_per_epoch),
                "cls_loss": float(totals[1] / steps_per_epoch),
                "box_loss": float(totals[2] / steps_per_epoch),
                "seconds": round(time.monotonic() - started, 1),
            }
            state.epoch = epoch + 1
            state.history.append(record)
            state.save(state_path)
            if val_set is not None and val_dir is not None:
                report = _validate(
                    out_dir / "last.params",
                    config,
                    train_set.classes,
                    out_dir / "validation",
                    val_dir,
                )
                # NaN (a validation set without labels) is not valid JSON: record null.
                record["val_map50"] = _finite_or_none(report.map50)
                record["val_map50_95"] = _finite_or_none(report.map50_95)
                state.save(state_path)
            log.info("epoch %s", json.dumps(record))
            if progress:
                print(_epoch_line(record), flush=True)

    final = export_prefix or (out_dir / "model")
    export_checkpoint(out_dir / "last.params", config, train_set.classes, final)
    return state


def _pretrain(
    net: mx.gluon.HybridBlock,
    train_set: Dataset,
    val_set: Dataset | None,
    config: TrainConfig,
    progress: bool,
) -> dict[str, Any]:
    from predictor.training.pretrain import pretrain_features

    result = pretrain_features(
        net.features,
        train_set,
        val_set,
        epochs=config.pretrain_epochs,
        learning_rate=config.pretrain_learning_rate,
        seed=config.seed,
        workers=config.workers,
        progress=progress,
    )
    line = (
        f"pretrained features on object crops: {result.epochs} epochs, "
        f"train accuracy {result.train_accuracy:.3f}"
    )
    if result.val_accuracy is not None:
        line += f", validation accuracy {result.val_accuracy:.3f}"
    log.info("%s (%.0f s)", line, result.seconds)
    if progress:
        print(f"{line} ({result.seconds:.0f} s)", flush=True)
    return asdict(result)


def export_checkpoint(
    params_path: Path, config: TrainConfig, classes: Sequence[str], prefix: Path
) -> None:
    """Write the checkpoint at ``prefix`` as the server loads it (`predictor.checkpoint`).

    Its preprocessing declaration is predictor's own transform at the
    training edge (`Preprocessing.predictor`), which training feeds the network.

    Builds a separate inference network from the saved weights: re-hybridising
    the training network in predict mode would replace its training graph.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_ssd(config.network, classes, config.edge)
        net.load_parameters(str(params_path))
        net.hybridize()
        net(mx.nd.zeros((1, 3, config.edge, config.edge)))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    net.export(str(prefix), epoch=0)
    checkpoint = Checkpoint(prefix, 0)
    checkpoint.write_class_names(classes)
    checkpoint.write_preprocessing(Preprocessing.predictor(config.edge))


def _validate(
    params_path: Path, config: TrainConfig, classes: Sequence[str], folder: Path, val_dir: Path
) -> EvaluationReport:
    from predictor.training.evaluate import evaluate_checkpoint

    shutil.rmtree(folder, ignore_errors=True)
    prefix = folder / "model"
    export_checkpoint(params_path, config, classes, prefix)
    return evaluate_checkpoint(prefix, val_dir, edge=config.edge, progress=False)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _epoch_line(record: dict[str, Any]) -> str:
    line = f"epoch {record['epoch']}: loss {record['loss']:.3f} ({record['seconds']:.0f} s)"
    if record.get("val_map50") is not None:
        line += (
            f", val mAP@0.5 {record['val_map50']:.3f}, mAP@[.5:.95] {record['val_map50_95']:.3f}"
        )
    return line


def _build_network(config: TrainConfig, classes: Sequence[str]) -> mx.gluon.HybridBlock:
    if not config.network.endswith("_custom"):
        raise TrainingError(f"{config.network}: train a '*_custom' GluonCV SSD network")
    try:
        net = build_ssd(config.network, classes, config.edge)
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"cannot build {config.network}: {exc}") from None
    net.initialize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net(mx.nd.zeros((1, 3, config.edge, config.edge)))
    # He initialisation of convolutions: MXNet's default uniform init makes a
    # deep network from scratch start with vanishing signals.
    rng = np.random.default_rng(config.seed)
    for name, parameter in net.collect_params().items():
        value = parameter.data()
        if name.endswith("weight") and value.ndim >= 2:
            fan_in = int(np.prod(value.shape[1:]))
            he = rng.normal(0.0, math.sqrt(2.0 / fan_in), value.shape).astype(np.float32)
            parameter.set_data(mx.nd.array(he))
    try:
        check_anchor_coverage(net, config.edge)
    except AnchorError as exc:
        raise TrainingError(f"{config.network} at {config.edge} px: {exc}") from None
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def _anchors(net: mx.gluon.HybridBlock, edge: int) -> mx.nd.NDArray:
    with mx.autograd.train_mode():
        _, _, anchors = net(mx.nd.zeros((1, 3, edge, edge)))
    return anchors


def _target_generator() -> Callable[..., Any]:
    from gluoncv.model_zoo.ssd.target import SSDTargetGenerator

    generator: Callable[..., Any] = SSDTargetGenerator(
        iou_thresh=0.5, stds=(0.1, 0.1, 0.2, 0.2), negative_mining_ratio=-1
    )
    return generator


def _multibox_loss(min_hard_negatives: int) -> Callable[..., Any]:
    from gluoncv.loss import SSDMultiBoxLoss

    # With no hard-negative floor an image without objects adds nothing to the loss (the
    # mining takes 3 negatives per positive), and the model is never told that the digits
    # it imagines in a photo are not there: each image's most confident wrong anchors count.
    loss: Callable[..., Any] = SSDMultiBoxLoss(min_hard_negatives=min_hard_negatives)
    return loss


def _train_step(
    net: mx.gluon.HybridBlock,
    trainer: mx.gluon.Trainer,
    loss_fn: Callable[..., Any],
    target_generator: Callable[..., Any],
    anchors: mx.nd.NDArray,
    images: npt.NDArray[np.float32],
    targets: list[npt.NDArray[np.float32]],
) -> npt.NDArray[np.float64]:
    cls_targets, box_targets = [], []
    for target in targets:
        if (target[:, 4] < 0).all():
            # No object: every anchor is background. (The target generator would match
            # the -1 padding row and encode log(0) box targets, NaN after masking.)
            cls_targets.append(mx.nd.zeros((1, anchors.shape[1])))
            box_targets.append(mx.nd.zeros((1, anchors.shape[1], 4)))
            continue
        boxes = mx.nd.array(target[np.newaxis, :, :4])
        ids = mx.nd.array(target[np.newaxis, :, 4:5])
        cls_target, box_target, _ = target_generator(anchors, None, boxes, ids)
        cls_targets.append(cls_target)
        box_targets.append(box_target)
    data = mx.nd.array(images)
    with mx.autograd.record():
        cls_preds, box_preds, _ = net(data)
        sum_loss, cls_loss, box_loss = loss_fn(
            cls_preds,
            box_preds,
            mx.nd.concat(*cls_targets, dim=0),
            mx.nd.concat(*box_targets, dim=0),
        )
        mx.autograd.backward(sum_loss)
    trainer.step(1)
    return np.array(
        [float(sum_loss[0].mean().asscalar()), float(cls_loss[0].mean().asscalar()),
         float(box_loss[0].mean().asscalar())]
    )  # fmt: skip


def _batches(
    pool: ThreadPoolExecutor,
    dataset: Dataset,
    order: npt.NDArray[np.int64],
    batch_size: int,
    augment: TrainAugment,
    rng: np.random.Generator,
) -> Iterator[Batch]:
    """Augmented batches, prepared two ahead on the pool."""
    seeds = rng.integers(0, 2**63, size=len(order))
    starts = range(0, len(order), batch_size)

    def submit(start: int) -> list[Future[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]]:
        return [
            pool.submit(_sample, dataset, dataset.images[int(order[i])], augment, int(seeds[i]))
            for i in range(start, min(start + batch_size, len(order)))
        ]

    pending = [submit(start) for start in list(starts)[:2]]
    for index, _ in enumerate(starts):
        futures = pending.pop(0)
        if index + 2 < len(starts):
            pending.append(submit(starts[index + 2]))
        samples = [future.result() for future in futures]
        yield np.stack([image for image, _ in samples]), [target for _, target in samples]


def _sample(
    dataset: Dataset, record: ImageRecord, augment: TrainAugment, seed: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    pixels = cv2.imread(str(record.image_path), cv2.IMREAD_COLOR)
    if pixels is None:
        raise TrainingError(f"cannot read image {record.image_path}")
    targets = dataset.targets(record)
    image, boxes, labels = augment(
        np.random.default_rng(seed),
        np.asarray(pixels, dtype=np.uint8),
        targets[:, :4].astype(np.int64),
        targets[:, 4].astype(np.int64),
    )
    rows = np.concatenate([boxes.astype(np.float32), labels.astype(np.float32)[:, None]], axis=1)
    if len(rows) == 0:
        rows = np.full((1, 5), -1.0, dtype=np.float32)  # no object left: all anchors background
    return to_tensor(image, augment.out_size[0]), rows


class _WarmupCosine:
    """Learning rate: linear warm-up, then cosine decay to zero."""

    def __init__(self, peak: float, warmup_steps: float, total_steps: int) -> None:
        self._peak = peak
        self._warmup = max(1.0, warmup_steps)
        self._total = max(total_steps, 1)

    def __call__(self, step: int) -> float:
        if step < self._warmup:
            return self._peak * (step + 1) / self._warmup
        progress = (step - self._warmup) / max(1.0, self._total - self._warmup)
        return self._peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
