"""Photo-like JPEGs of mixed sizes for load tests, rendered once and cached on disk."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from predictor.data.synth import SceneConfig, render_scene

# Typical camera and web sizes, the largest a 12-megapixel phone photo.
PHOTO_SIZES = ((640, 480), (1024, 768), (1280, 720), (1920, 1080), (2592, 1944), (4000, 3000))


def make_photos(folder: Path, count: int, seed: int = 2024) -> list[Path]:
    """``count`` JPEGs cycling through `PHOTO_SIZES`; reuses files already there."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        width, height = PHOTO_SIZES[index % len(PHOTO_SIZES)]
        path = folder / f"photo_{index:03d}_{width}x{height}.jpg"
        scene = render_scene(rng, SceneConfig(min_side=320, max_side=640))
        if not path.exists():
            image = cv2.resize(scene.image, (width, height), interpolation=cv2.INTER_CUBIC)
            # Sensor-like noise: real photos carry detail that makes decoding cost what it costs.
            noisy = image.astype(np.int16) + rng.normal(0, 6, image.shape).astype(np.int16)
            pixels = np.clip(noisy, 0, 255).astype(np.uint8)
            cv2.imwrite(str(path), pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def gradient_photo(seed: int) -> NDArray[np.uint8]:
    """A stand-in photo: smooth colour ramps with noise (real photos are for evaluation)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, 400, dtype=np.float32)
    image = np.stack([np.tile(ramp, (300, 1))] * 3, axis=2) * rng.uniform(0.3, 1.0, 3)
    noisy = np.clip(image + rng.normal(0, 8, image.shape), 0, 255)
    return np.asarray(noisy, dtype=np.uint8)
