"""Command line: `predictor serve | export | predict | data ...`.

Errors a user can fix (bad settings, missing files) are printed as one line
naming the variable or file, with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from predictor.checkpoint import Checkpoint
from predictor.config import MODEL_ENGINES, Settings, parse_probability
from predictor.convert.cli import add_convert_parser
from predictor.data.cli import add_data_parser, int_at_least
from predictor.errors import CheckpointError, ConfigError, PredictorError
from predictor.runtime.memory import configure_temp_space, settle_heap, tune_allocator
from predictor.runtime.threads import configure_openmp
from predictor.training.config import TrainConfig, VerifierConfig

if TYPE_CHECKING:
    from predictor.runtime.model import Detector

EXIT_USAGE = 2
EXIT_FAILURE = 1

log = logging.getLogger("predictor")


class UserError(PredictorError):
    """A problem the user can fix; printed without a traceback."""


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `predictor` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
    except PredictorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILURE
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def build_parser() -> argparse.ArgumentParser:
    """All sub-commands and their options."""
    parser = argparse.ArgumentParser(
        prog="predictor", description="MXNet SSD object-detection inference server."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="start the HTTP server (configured by environment variables)"
    )
    serve.set_defaults(func=_cmd_serve)

    export = commands.add_parser("export", help="export a GluonCV model-zoo network")
    export.add_argument(
        "--zoo", required=True, metavar="NAME", help="e.g. ssd_512_resnet50_v1_coco"
    )
    export.add_argument("--out", required=True, type=Path, metavar="PREFIX", help="output prefix")
    export.add_argument(
        "--random-init", action="store_true", help="untrained weights (tests and benchmarks only)"
    )
    export.add_argument("--classes", metavar="A,B,...", help="class names, for *_custom networks")
    export.add_argument("--edge", type=int, help="input edge, when the name does not say")
    export.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    export.add_argument(
        "--weights-dir",
        type=Path,
        default=Path("~/.mxnet/models"),
        help="where GluonCV's pretrained .params files are (default: %(default)s)",
    )
    export.set_defaults(func=_cmd_export)

    quantize = commands.add_parser(
        "quantize", help="write an int8 version of a checkpoint for the CPU (MODEL_DTYPE=int8)"
    )
    quantize.add_argument("--model", required=True, type=Path, metavar="PREFIX")
    quantize.add_argument(
        "--calib",
        required=True,
        type=Path,
        metavar="DIR",
        help="images like the training images (searched recursively)",
    )
    quantize.add_argument(
        "--out", type=Path, metavar="PREFIX", help="default: PREFIX-int8, where the server looks"
    )
    quantize.add_argument("--epoch", type=int, default=0)
    quantize.add_argument("--edge", type=int, default=300, help="input edge (default: 300)")
    quantize.add_argument(
        "--images", type=int, default=300, help="calibration images (default: %(default)s)"
    )
    quantize.add_argument(
        "--mode", choices=("naive", "entropy"), default="naive", help="default: %(default)s"
    )
    quantize.set_defaults(func=_cmd_quantize)

    predict = commands.add_parser(
        "predict", help="detect objects in image files or folders, as JSON lines"
    )
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    predict.add_argument("--out", type=Path, metavar="DIR", help="also write images with boxes")
    predict.add_argument(
        "--threshold", type=_probability_arg, help="default: PROBABILITY_MORE (0.5)"
    )
    predict.add_argument(
        "--model", type=Path, metavar="PREFIX", help="checkpoint prefix (default: MODEL_PREFIX)"
    )
    predict.add_argument("--epoch", type=int, help="checkpoint epoch (default: MODEL_EPOCH)")
    predict.add_argument("--edge", type=int, help="input edge (default: MODEL_EDGE)")
    predict.set_defaults(func=_cmd_predict)

    _add_training_commands(commands)

    healthcheck = commands.add_parser(
        "healthcheck", help="exit 0 if the local server answers /health (for HEALTHCHECK)"
    )
    healthcheck.add_argument("--path", default="/health", help="default: %(default)s")
    healthcheck.add_argument("--timeout", type=float, default=3.0, help="seconds")
    healthcheck.set_defaults(func=_cmd_healthcheck)

    add_data_parser(commands)
    add_convert_parser(commands)
    return parser


def _add_training_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = TrainConfig()
    train = commands.add_parser(
        "train", help="train a GluonCV SSD *_custom network on a VOC, COCO or YOLO dataset"
    )
    train.add_argument("--data", required=True, type=Path, metavar="DIR", help="training set")
    train.add_argument("--val", type=Path, metavar="DIR", help="validation set (mAP per epoch)")
    train.add_argument("--out", required=True, type=Path, metavar="DIR", help="run folder")
    train.add_argument(
        "--export", type=Path, metavar="PREFIX", help="final checkpoint (default: OUT/model)"
    )
    train.add_argument("--network", default=defaults.network, help="default: %(default)s")
    train.add_argument("--edge", type=int, default=defaults.edge, help="default: %(default)s")
    train.add_argument("--epochs", type=int, default=defaults.epochs, help="default: %(default)s")
    train.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="default: %(default)s"
    )
    train.add_argument(
        "--lr", type=float, default=defaults.learning_rate, help="peak learning rate"
    )
    train.add_argument(
        "--pretrain-epochs",
        type=int,
        default=defaults.pretrain_epochs,
        help="passes of object-crop classification that start the features (default: %(default)s)",
    )
    train.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    train.add_argument("--workers", type=int, default=defaults.workers, help="augmentation threads")
    train.add_argument(
        "--init",
        type=Path,
        metavar="PARAMS",
        help="fine-tune: start from an earlier run's last.params (same network and classes; "
        "no crop pretraining)",
    )
    train.add_argument(
        "--hard-negatives",
        type=int_at_least(1),
        default=defaults.min_hard_negatives,
        metavar="N",
        help="background anchors each image adds to the loss at least, its most confident "
        "wrong ones: what a photo with nothing to find teaches (default: %(default)s)",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue the run in OUT from its last epoch"
    )
    train.set_defaults(func=_cmd_train)

    verifier_defaults = VerifierConfig()
    verifier = commands.add_parser(
        "train-verifier",
        help="train a crop verifier on a trained detector's candidates and export the two "
        "as one checkpoint (a second look that removes the detector's false detections)",
    )
    verifier.add_argument(
        "--detector", required=True, type=Path, metavar="PREFIX",
        help="the detector's checkpoint, as `predictor train --export` wrote it",
    )  # fmt: skip
    verifier.add_argument(
        "--data", required=True, type=Path, action="append", metavar="DIR",
        help="labelled scenes (repeat for several sets)",
    )  # fmt: skip
    verifier.add_argument(
        "--photos", type=Path, action="append", default=[], metavar="DIR",
        help="photos with nothing to find, seen as random views (repeat for several folders)",
    )  # fmt: skip
    verifier.add_argument(
        "--val", type=Path, metavar="DIR", help="labelled scenes for the verifier's accuracy"
    )
    verifier.add_argument("--out", required=True, type=Path, metavar="DIR", help="run folder")
    verifier.add_argument(
        "--export", required=True, type=Path, metavar="PREFIX", help="the verified checkpoint"
    )
    verifier.add_argument(
        "--epochs", type=int_at_least(1), default=verifier_defaults.epochs,
        help="default: %(default)s",
    )  # fmt: skip
    verifier.add_argument(
        "--scenes-per-set", type=int_at_least(1), default=verifier_defaults.scenes_per_set,
        metavar="N", help="the first N scenes of each --data set (default: %(default)s)",
    )  # fmt: skip
    verifier.add_argument(
        "--views-per-folder", type=int_at_least(1), default=verifier_defaults.views_per_folder,
        metavar="N", help="random views of each --photos folder (default: %(default)s)",
    )  # fmt: skip
    verifier.add_argument(
        "--seed", type=int, default=verifier_defaults.seed, help="default: %(default)s"
    )
    verifier.set_defaults(func=_cmd_train_verifier)

    evaluate = commands.add_parser(
        "evaluate",
        help="VOC mAP@0.5 per class and COCO mAP@[.5:.95] of a checkpoint, or its false "
        "detections in photos with nothing to find",
    )
    evaluate.add_argument("--model", required=True, type=Path, metavar="PREFIX")
    what = evaluate.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", type=Path, metavar="DIR", help="labelled dataset: mAP")
    what.add_argument(
        "--negatives",
        type=Path,
        metavar="DIR",
        help="folder of photos with no object of the model's classes: false detections",
    )
    evaluate.add_argument(
        "--threshold",
        type=_probability_arg,
        default=0.5,
        help="with --negatives: count detections above this (default: %(default)s)",
    )
    evaluate.add_argument("--epoch", type=int, default=0)
    evaluate.add_argument("--edge", type=int, default=300, help="input edge (default: 300)")
    evaluate.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        help="as MODEL_DTYPE (default: the checkpoint's own type; an int8 checkpoint is "
        "given by its prefix)",
    )
    evaluate.add_argument(
        "--engine",
        choices=MODEL_ENGINES,
        default="mxnet",
        help="as MODEL_ENGINE (default: %(default)s)",
    )
    evaluate.add_argument("--json", type=Path, metavar="FILE", help="also write the report")
    evaluate.set_defaults(func=_cmd_evaluate)


def _probability_arg(raw: str) -> float:
    try:
        return parse_probability(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load(settings: Settings, *, default_only: bool = False) -> dict[str, list[Detector]]:
    """The configured models (or the default alone), loaded and warmed.

    A model that fails to load stops start-up with its name and the reason.
    """
    from predictor.runtime.model import load_detectors

    models: dict[str, list[Detector]] = {}
    for spec in settings.models[:1] if default_only else settings.models:
        log.info(
            "loading model %r from %s (epoch %d, %s) on %s",
            spec.name,
            spec.prefix,
            spec.epoch,
            settings.model_dtype,
            settings.devices.describe(),
        )
        try:
            models[spec.name] = load_detectors(
                spec.prefix,
                spec.epoch,
                spec.edge,
                settings.devices,
                settings.batch_max_size,
                settings.model_dtype,
                graph_per_batch_size=settings.model_graph_per_batch_size,
                engine=settings.model_engine,
                engine_threads=settings.model_cpu_threads,
            )
        except CheckpointError as exc:
            if len(settings.models) == 1:
                raise
            raise CheckpointError(f"model {spec.name!r} did not load: {exc}") from None
    return models


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if settings.model_cpu_threads is not None:
        configure_openmp(settings.model_cpu_threads)
    configure_temp_space(settings.cpu_temp_workspaces)
    _configure_logging(settings.log_level)
    from predictor.http.server import serve

    # Before the models load: their buffers follow the same rule (predictor/runtime/memory.py).
    tune_allocator()
    models = _load(settings)
    settle_heap()
    asyncio.run(serve(settings, models))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from predictor.export import export_zoo

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    result = export_zoo(
        args.zoo,
        args.out,
        random_init=args.random_init,
        classes=classes,
        edge=args.edge,
        seed=args.seed,
        weights_dir=args.weights_dir,
    )
    print(
        f"exported {args.zoo} ({len(result.classes)} classes, {result.edge}x{result.edge}"
        f"{', RANDOM weights' if result.random_init else ''}) to "
        f"{result.symbol_path}, {result.params_path}, {result.synset_path}"
    )
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from predictor.runtime.quantize import quantize_checkpoint

    _configure_logging("WARNING")
    result = quantize_checkpoint(
        args.model,
        args.calib,
        args.out,
        edge=args.edge,
        epoch=args.epoch,
        images=args.images,
        mode=args.mode,
    )
    print(
        f"quantized {args.model} to int8 ({result.calibration_images} calibration images, "
        f"{result.seconds:.1f} s): {result.symbol_path}, {result.params_path}"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    # Flags stand in for the environment variables of the same meaning.
    overrides = {
        "MODEL_PREFIX": args.model,
        "MODEL_EPOCH": args.epoch,
        "MODEL_EDGE": args.edge,
    }
    settings = Settings.from_env(
        overrides={name: str(value) for name, value in overrides.items() if value is not None}
    )
    if settings.model_cpu_threads is not None:
        configure_openmp(settings.model_cpu_threads)
    from predictor.offline import detect_files, write_drawing
    from predictor.runtime.imaging import find_images

    _configure_logging("WARNING")
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        raise UserError(f"no such file or folder: {missing[0]}")
    files = find_images(args.paths)
    if not files:
        raise UserError("no image files found in " + ", ".join(str(p) for p in args.paths))
    detector = next(iter(_load(settings, default_only=True).values()))[0]
    threshold = settings.probability_threshold if args.threshold is None else args.threshold
    source_root = args.paths[0] if len(args.paths) == 1 and args.paths[0].is_dir() else None
    failures = 0
    results = detect_files(
        files,
        detector,
        threshold,
        settings.max_image_pixels,
        settings.preprocess_workers,
        settings.preprocess_nice,
    )
    for result in tqdm(results, total=len(files), unit="img", file=sys.stderr):
        sys.stdout.write(result.to_json_line() + "\n")
        if result.error is not None:
            failures += 1
        elif args.out is not None:
            write_drawing(result, source_root, args.out)
    sys.stdout.flush()
    if failures:
        print(f"{failures} of {len(files)} files could not be read", file=sys.stderr)
    return EXIT_FAILURE if failures == len(files) else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from predictor.training.train import train

    _configure_logging("WARNING")
    config = TrainConfig(
        network=args.network,
        edge=args.edge,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        pretrain_epochs=args.pretrain_epochs,
        seed=args.seed,
        workers=args.workers,
        init_params=str(args.init) if args.init else None,
        min_hard_negatives=args.hard_negatives,
    )
    state = train(
        args.data,
        args.out,
        config,
        val_dir=args.val,
        resume=args.resume,
        export_prefix=args.export,
    )
    final = args.export or args.out / "model"
    exported = Checkpoint(final)
    print(f"trained {state.epoch} epochs; exported {exported.symbol_path}, {exported.params_path}")
    return 0


def _cmd_train_verifier(args: argparse.Namespace) -> int:
    from predictor.training.train_verifier import train_verifier

    _configure_logging("WARNING")
    for option, folders in (("--data", args.data), ("--photos", args.photos)):
        for folder in folders:
            if not folder.is_dir():
                raise UserError(f"{option} {folder}: no such folder")
    if args.val is not None and not args.val.is_dir():
        raise UserError(f"--val {args.val}: no such folder")
    config = VerifierConfig(
        epochs=args.epochs,
        seed=args.seed,
        scenes_per_set=args.scenes_per_set,
        views_per_folder=args.views_per_folder,
    )
    report = train_verifier(
        args.detector,
        args.data,
        args.photos,
        args.out,
        config,
        export_prefix=args.export,
        val_dir=args.val,
    )
    line = (
        f"verifier trained on {report.scene_crops} scene and {report.photo_crops} photo crops "
        f"({report.background_share:.0%} background), training accuracy "
        f"{report.train_accuracy:.3f}"
    )
    if report.val_objects_accuracy is not None:
        line += (
            f"; validation: objects {report.val_objects_accuracy:.3f}, "
            f"background {report.val_background_accuracy:.3f}"
        )
    exported = Checkpoint(args.export)
    print(f"{line}; exported {exported.symbol_path}, {exported.params_path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from predictor.training.detection_metrics import EvaluationReport
    from predictor.training.evaluate import (
        NegativesReport,
        evaluate_checkpoint,
        evaluate_negatives,
    )

    _configure_logging("WARNING")
    report: EvaluationReport | NegativesReport
    try:
        if args.negatives is not None:
            report = evaluate_negatives(
                args.model, args.negatives, edge=args.edge, epoch=args.epoch,
                threshold=args.threshold, dtype=args.dtype, engine=args.engine,
            )  # fmt: skip
        else:
            report = evaluate_checkpoint(
                args.model, args.data, edge=args.edge, epoch=args.epoch,
                dtype=args.dtype, engine=args.engine,
            )  # fmt: skip
    except ValueError as exc:
        if isinstance(exc, PredictorError):
            raise
        raise UserError(str(exc)) from None
    print(report.format_table())
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0


def _cmd_healthcheck(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    settings = Settings.from_env()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
    url = f"http://{host}:{settings.port}{args.path}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            healthy = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0 if healthy else EXIT_FAILURE


if __name__ == "__main__":
    main()
