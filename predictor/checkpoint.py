"""The checkpoint on disk: which files a model is, and the preprocessing it declares.

A checkpoint at ``PREFIX`` and epoch ``E`` is what MXNet's ``HybridBlock.export``
writes, plus two small text files::

    PREFIX-symbol.json       the network (MXNet symbol JSON)
    PREFIX-EEEE.params       the weights (four-digit epoch)
    synset.txt               beside PREFIX: one class name per line
    PREFIX-preprocess.json   optional: how images become the network's input

This module is the only place that spells these names; export, training,
quantization, conversion and the server all go through `Checkpoint`.

The preprocessing declaration (`Preprocessing`) is a JSON object; every field
is optional and defaults to GluonCV's evaluation transform
(``SSDDefaultValTransform``), because a checkpoint without the file is a
GluonCV export:

=================  =====================  ==============================================
field              default                meaning
=================  =====================  ==============================================
width, height      512 (MODEL_EDGE)       network input size in pixels
resize             "stretch"              "stretch": the whole image to width x height;
                                          "letterbox": aspect kept, the rest padded
letterbox_anchor   "center"               where the resized image sits: "center" or
                                          "top-left" (letterbox only)
pad_value          0                      padding pixel value, a whole number 0..255
                                          (letterbox only)
interpolation      "gluoncv"              "gluoncv": GluonCV's ``imresize(interp=9)``:
                                          cubic when both sides grow, area when both
                                          shrink, bilinear otherwise; "predictor":
                                          area when either side shrinks, else bilinear
pixel_scale        1                      1: pixels divided by 255 (0..1); 255: 0..255
mean               [0.485, 0.456, 0.406]  subtracted per channel (RGB order, in
                                          pixel_scale units)
std                [0.229, 0.224, 0.225]  divided per channel (RGB order)
channel_order      "RGB"                  channel order of the network input
layout             "NCHW"                 "NCHW" or "NHWC"
reduced_decoding   false                  true: large JPEGs may be decoded at 1/2, 1/4
                                          or 1/8 scale inside libjpeg (faster, and
                                          slightly different pixels)
=================  =====================  ==============================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from predictor.errors import CheckpointError

SYMBOL_SUFFIX = "-symbol.json"
PREPROCESS_SUFFIX = "-preprocess.json"
SYNSET_NAME = "synset.txt"
# Where `predictor quantize` writes the int8 version of PREFIX by default.
INT8_SUFFIX = "-int8"

# GluonCV's SSD evaluation transform: ImageNet statistics, RGB on 0..1.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_EDGE = 512

Resize = Literal["stretch", "letterbox"]
Anchor = Literal["center", "top-left"]
Interpolation = Literal["gluoncv", "predictor"]
ChannelOrder = Literal["RGB", "BGR"]
Layout = Literal["NCHW", "NHWC"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "resize": ("stretch", "letterbox"),
    "letterbox_anchor": ("center", "top-left"),
    "interpolation": ("gluoncv", "predictor"),
    "channel_order": ("RGB", "BGR"),
    "layout": ("NCHW", "NHWC"),
}


@dataclass(frozen=True)
class Preprocessing:
    """How a JPEG becomes the network's input; see the module docstring for each field."""

    width: int = DEFAULT_EDGE
    height: int = DEFAULT_EDGE
    resize: Resize = "stretch"
    letterbox_anchor: Anchor = "center"
    pad_value: int = 0
    interpolation: Interpolation = "gluoncv"
    pixel_scale: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: ChannelOrder = "RGB"
    layout: Layout = "NCHW"
    reduced_decoding: bool = False

    @classmethod
    def gluoncv(cls, edge: int = DEFAULT_EDGE) -> Preprocessing:
        """GluonCV's ``SSDDefaultValTransform(edge, edge)``: what an undeclared checkpoint gets."""
        return cls(width=edge, height=edge)

    @classmethod
    def predictor(cls, edge: int) -> Preprocessing:
        """What predictor's own training uses: ImageNet statistics, our resize, reduced decoding."""
        return cls(width=edge, height=edge, interpolation="predictor", reduced_decoding=True)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One image's tensor shape: (3, height, width) or (height, width, 3)."""
        if self.layout == "NCHW":
            return (3, self.height, self.width)
        return (self.height, self.width, 3)

    def with_edge(self, edge: int) -> Preprocessing:
        """The same preprocessing on a square ``edge`` x ``edge`` input."""
        return replace(self, width=edge, height=edge)

    def describe(self) -> str:
        """One line for the start-up log."""
        resize: str = self.resize
        if self.resize == "letterbox":
            resize = f"letterbox ({self.letterbox_anchor}, pad {self.pad_value})"
        return (
            f"{self.width}x{self.height} {resize}, {self.interpolation} interpolation, "
            f"0..{self.pixel_scale:g} {self.channel_order} {self.layout}, "
            f"mean {list(self.mean)}, std {list(self.std)}, "
            f"reduced decoding {'on' if self.reduced_decoding else 'off'}"
        )

    def to_json(self) -> dict[str, Any]:
        """The declaration as written to ``PREFIX-preprocess.json``."""
        values = asdict(self)
        values["mean"] = list(self.mean)
        values["std"] = list(self.std)
        return values

    @classmethod
    def from_json(cls, value: Any, source: str) -> Preprocessing:
        """Validate a parsed declaration; `CheckpointError` names ``source`` and the field."""
        if not isinstance(value, dict):
            raise CheckpointError(f"{source}: expected a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(value) - known)
        if unknown:
            raise CheckpointError(
                f"{source}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        fields: dict[str, Any] = {}
        for name in ("width", "height"):
            if name in value:
                fields[name] = _whole(value[name], name, source, 8, 8192)
        for name, choices in _CHOICES.items():
            if name in value:
                if value[name] not in choices:
                    raise CheckpointError(
                        f"{source}: {name} must be one of {', '.join(map(repr, choices))}, "
                        f"not {value[name]!r}"
                    )
                fields[name] = value[name]
        if "pad_value" in value:
            fields["pad_value"] = _whole(value["pad_value"], "pad_value", source, 0, 255)
        if "pixel_scale" in value:
            scale = _number(value["pixel_scale"], "pixel_scale", source, 0.0, math.inf)
            if scale not in (1.0, 255.0):
                raise CheckpointError(f"{source}: pixel_scale must be 1 or 255, not {scale:g}")
            fields["pixel_scale"] = scale
        for name in ("mean", "std"):
            if name in value:
                fields[name] = _triple(value[name], name, source, positive=name == "std")
        if "reduced_decoding" in value:
            if not isinstance(value["reduced_decoding"], bool):
                raise CheckpointError(f"{source}: reduced_decoding must be true or false")
            fields["reduced_decoding"] = value["reduced_decoding"]
        return cls(**fields)


@dataclass(frozen=True)
class Checkpoint:
    """The files of the checkpoint at ``prefix`` and ``epoch``; nothing is read until asked."""

    prefix: Path
    epoch: int = 0
    # Where the preprocessing declaration is looked for when the checkpoint has
    # none of its own (an int8 checkpoint falls back to its float32 original's).
    fallback_preprocess: Path | None = field(default=None, compare=False)

    @property
    def symbol_path(self) -> Path:
        """The network definition."""
        return Path(f"{self.prefix}{SYMBOL_SUFFIX}")

    @property
    def params_path(self) -> Path:
        """The weights of ``epoch``."""
        return Path(f"{self.prefix}-{self.epoch:04d}.params")

    @property
    def synset_path(self) -> Path:
        """The class names, beside the prefix."""
        return self.prefix.parent / SYNSET_NAME

    @property
    def preprocess_path(self) -> Path:
        """The preprocessing declaration (optional)."""
        return Path(f"{self.prefix}{PREPROCESS_SUFFIX}")

    @classmethod
    def from_prefix(cls, prefix: Path | str, epoch: int = 0) -> Checkpoint:
        """The checkpoint at ``prefix`` for ``epoch``; `CheckpointError` if a file is missing."""
        checkpoint = cls(Path(prefix), epoch)
        checkpoint.require()
        return checkpoint

    def exists(self) -> bool:
        """True when the network and its weights are there (the class names aside)."""
        return self.symbol_path.is_file() and self.params_path.is_file()

    def require(self) -> None:
        """Raise `CheckpointError` naming the first required file that is missing."""
        for path in (self.symbol_path, self.params_path, self.synset_path):
            if not path.is_file():
                raise CheckpointError(f"model file not found: {path}")

    def class_names(self) -> list[str]:
        """The class names of ``synset.txt``."""
        return read_class_names(self.synset_path)

    def preprocessing(self, default_edge: int = DEFAULT_EDGE) -> tuple[Preprocessing, bool]:
        """The declared preprocessing and True, or GluonCV's at ``default_edge`` and False."""
        for path in (self.preprocess_path, self.fallback_preprocess):
            if path is not None and path.is_file():
                return read_preprocessing(path), True
        return Preprocessing.gluoncv(default_edge), False

    def write_class_names(self, classes: Sequence[str]) -> None:
        """Write ``synset.txt``; refuse to replace one that lists other classes."""
        write_class_names(self.synset_path, classes)

    def write_preprocessing(self, preprocessing: Preprocessing) -> None:
        """Write ``PREFIX-preprocess.json``."""
        text = json.dumps(preprocessing.to_json(), indent=2) + "\n"
        self.preprocess_path.write_text(text, encoding="utf-8")


def read_class_names(path: Path) -> list[str]:
    """Class names from ``synset.txt``: one per line, blank lines ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read class names from {path}: {exc}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise CheckpointError(f"{path} lists no class names")
    if len(set(names)) != len(names):
        raise CheckpointError(f"{path} lists a class name twice")
    return names


def write_class_names(path: Path, classes: Sequence[str]) -> None:
    """Write ``synset.txt`` at ``path``, unless one listing other classes is already there.

    Several checkpoints may share a folder, and so its ``synset.txt``: writing
    another class list over it would silently rename every other model's classes.
    """
    wanted = [str(name) for name in classes]
    if path.is_file():
        existing = read_class_names(path)
        if existing == wanted:
            return
        raise CheckpointError(
            f"{path} already lists other classes ({len(existing)}: {', '.join(existing[:5])}"
            f"{'...' if len(existing) > 5 else ''}); write this checkpoint to another folder"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(wanted) + "\n", encoding="utf-8")


def read_preprocessing(path: Path) -> Preprocessing:
    """Read and validate a ``PREFIX-preprocess.json``."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    return Preprocessing.from_json(value, str(path))


def _whole(value: Any, name: str, source: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CheckpointError(f"{source}: {name} must be a whole number from {low} to {high}")
    return value


def _number(value: Any, name: str, source: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckpointError(f"{source}: {name} must be a number")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise CheckpointError(f"{source}: {name} must be between {low:g} and {high:g}")
    return number


def _triple(value: Any, name: str, source: str, *, positive: bool) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3:
        raise CheckpointError(f"{source}: {name} must be a list of 3 numbers (R, G, B)")
    numbers = tuple(_number(v, name, source, -math.inf, math.inf) for v in value)
    if positive and min(numbers) <= 0:
        raise CheckpointError(f"{source}: {name} values must be positive")
    return (numbers[0], numbers[1], numbers[2])


__all__ = [
    "INT8_SUFFIX",
    "PREPROCESS_SUFFIX",
    "SYMBOL_SUFFIX",
    "SYNSET_NAME",
    "Checkpoint",
    "Preprocessing",
    "read_class_names",
    "read_preprocessing",
    "write_class_names",
]
