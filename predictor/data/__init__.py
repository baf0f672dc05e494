"""Datasets for the digits-and-shapes detector: synthesis, formats, augmentation.

Boxes everywhere are half-open integer pixel edges ``xmin, ymin, xmax, ymax`` with the
origin at the top-left (:mod:`predictor.data.boxes` documents the conversions to VOC,
COCO and YOLO). Bad dataset input raises :class:`DatasetError`.

Modules: ``boxes`` (box type, conversions), ``formats`` (load/save any format; ``voc``,
``coco``, ``yolo`` hold one format each), ``synth`` (scene rendering; ``glyphs``,
``strokes`` and ``backgrounds`` draw its parts), ``augment`` (box-safe augmentation),
``cli`` (the ``predictor data`` command).
"""

from predictor.data.augment import TrainAugment
from predictor.data.boxes import Annotation, Box
from predictor.data.classes import CLASSES
from predictor.data.dataset import Dataset, ImageRecord
from predictor.data.errors import DatasetError
from predictor.data.formats import FORMATS, Format, detect_format, load_dataset, save_dataset
from predictor.data.synth import (
    FixtureObject,
    Scene,
    SceneConfig,
    encode_jpeg,
    render_fixture,
    render_scene,
    synthesize,
)

__all__ = [
    "CLASSES",
    "FORMATS",
    "Annotation",
    "Box",
    "Dataset",
    "DatasetError",
    "FixtureObject",
    "Format",
    "ImageRecord",
    "Scene",
    "SceneConfig",
    "TrainAugment",
    "detect_format",
    "encode_jpeg",
    "load_dataset",
    "render_fixture",
    "render_scene",
    "save_dataset",
    "synthesize",
]
