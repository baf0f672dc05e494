"""`predictor convert tfjs MODEL_JSON --out PREFIX`: the command-line side of the converters."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEAD_CHOICES = ("nanodet", "centernet")


def add_convert_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``convert`` and its ``tfjs`` sub-command."""
    convert = commands.add_parser(
        "convert", help="convert a detector from another framework into an MXNet checkpoint"
    )
    sources = convert.add_subparsers(dest="source", required=True, metavar="SOURCE")
    tfjs = sources.add_parser(
        "tfjs",
        help="a TensorFlow.js graph model (model.json + .bin files)",
        description=(
            "Writes PREFIX-symbol.json, PREFIX-0000.params, PREFIX-preprocess.json and "
            "synset.txt beside PREFIX. The graph takes `data` (NCHW float32, any batch) and "
            "returns class ids, scores and boxes after class-aware NMS."
        ),
    )
    tfjs.add_argument("model_json", type=Path, metavar="MODEL_JSON")
    tfjs.add_argument("--out", required=True, type=Path, metavar="PREFIX", help="output prefix")
    tfjs.add_argument(
        "--head",
        choices=HEAD_CHOICES,
        help="decoding of the raw outputs (required unless --raw)",
    )
    tfjs.add_argument(
        "--raw",
        action="store_true",
        help="end the graph in the source's own outputs (no decoding, no NMS): for comparisons",
    )
    tfjs.add_argument(
        "--outputs", metavar="A,B,...", help="source output nodes (default: the head's)"
    )
    tfjs.add_argument(
        "--classes", type=Path, metavar="FILE", help="class names, one a line (default: COCO 80)"
    )
    tfjs.add_argument(
        "--preprocess",
        type=Path,
        metavar="FILE",
        help="preprocessing declaration to write (default: the head's measured one)",
    )
    tfjs.add_argument("--input-layout", choices=("auto", "NCHW", "NHWC"), default="auto")
    tfjs.add_argument("--score-threshold", type=float, help="NMS valid threshold (default 0.05)")
    tfjs.add_argument("--iou-threshold", type=float, help="NMS overlap (default per head)")
    tfjs.add_argument("--max-detections", type=int, help="rows per image (default 100)")
    tfjs.set_defaults(func=_cmd_convert_tfjs)


def _cmd_convert_tfjs(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from predictor.checkpoint import read_preprocessing
    from predictor.convert.checkpoint import convert_tfjs, default_nms
    from predictor.convert.errors import ConversionError

    if args.head is None and not args.raw:
        raise ConversionError("give --head nanodet|centernet (or --raw)")
    classes = None
    if args.classes is not None:
        try:
            text = args.classes.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConversionError(f"cannot read {args.classes}: {exc}") from None
        classes = [line.strip() for line in text.splitlines() if line.strip()]
    preprocess = read_preprocessing(args.preprocess) if args.preprocess else None
    nms = default_nms(args.head or "nanodet")
    overrides = {
        "score_threshold": args.score_threshold,
        "iou_threshold": args.iou_threshold,
        "max_detections": args.max_detections,
    }
    nms = replace(nms, **{k: v for k, v in overrides.items() if v is not None})
    outputs = [o.strip() for o in args.outputs.split(",")] if args.outputs else None
    result = convert_tfjs(
        args.model_json,
        args.out,
        args.head,
        classes=classes,
        preprocess=preprocess,
        outputs=outputs,
        nms=nms,
        input_layout=args.input_layout,
        raw=args.raw,
    )
    summary = {
        "symbol": str(result.symbol_path),
        "params": str(result.params_path),
        "synset": str(result.synset_path),
        "preprocess": str(result.preprocess_path),
        "source_outputs": list(result.outputs),
        "input_shape": list(result.input_shape),
        "parameters": result.parameters,
        "seconds": round(result.seconds, 2),
    }
    print(json.dumps(summary))
    return 0
