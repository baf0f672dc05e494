"""The style sets: training variety, a withheld set that shares nothing with it, photos."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from predictor.data import CLASSES, SceneConfig, load_dataset, render_scene
from predictor.data.boxes import Box, tight_box
from predictor.data.errors import MissingAssetError
from predictor.data.fonts import TRAINING_FAMILIES, WITHHELD_FAMILIES, font_files
from predictor.data.glyphs import render_glyph
from predictor.data.photos import (
    HARD_NEGATIVE_PHOTOS,
    NEGATIVE_SAMPLES,
    ROUND_THING_PHOTOS,
    WITHHELD_WALLPAPERS,
    PhotoLibrary,
    find_wallpapers,
    prepare_photos,
    write_hard_negatives,
    write_negatives,
    write_round_things,
)
from predictor.data.stickers import compose_sticker_photos, find_stickers
from predictor.data.styles import CLUTTER_CHARACTERS, StyleSet, style_set
from predictor.data.synth import MIN_CONTRAST, Scene, _luma
from tests.support.photos import gradient_photo

from .helpers import run_cli

CONFIG = SceneConfig(min_side=160, max_side=320)


@pytest.fixture(scope="module")
def photos() -> PhotoLibrary:
    return PhotoLibrary([gradient_photo(i) for i in range(3)])


@pytest.fixture(scope="module")
def train_scenes(photos: PhotoLibrary) -> list[Scene]:
    styles = style_set("train")
    return [
        render_scene(np.random.default_rng([77, i]), CONFIG, styles, photos) for i in range(300)
    ]


@pytest.fixture(scope="module")
def withheld_scenes(photos: PhotoLibrary) -> list[Scene]:
    styles = style_set("withheld")
    return [
        render_scene(np.random.default_rng([78, i]), CONFIG, styles, photos) for i in range(150)
    ]


def test_withheld_fonts_share_no_file_and_no_family_with_training() -> None:
    training, withheld = font_files(TRAINING_FAMILIES), font_files(WITHHELD_FAMILIES)
    assert training and withheld
    assert not set(training) & set(withheld)
    assert not {f.name for f in TRAINING_FAMILIES} & {f.name for f in WITHHELD_FAMILIES}
    assert style_set("train").glyphs.fonts == training
    assert style_set("withheld").glyphs.fonts == withheld


def test_training_scenes_use_every_training_style_and_no_withheld_one(
    train_scenes: list[Scene],
) -> None:
    styles = Counter(
        ("digit" if o.label.isdigit() else "shape", o.style)
        for s in train_scenes
        for o in s.objects
    )
    assert set(styles) == {
        ("digit", "font"), ("digit", "type"), ("digit", "hand"),
        ("shape", "filled"), ("shape", "outline"), ("shape", "hand"), ("shape", "soft"),
    }, styles  # fmt: skip
    assert set(o.label for s in train_scenes for o in s.objects) == set(CLASSES)


def test_withheld_scenes_use_only_withheld_styles(withheld_scenes: list[Scene]) -> None:
    styles = Counter(
        ("digit" if o.label.isdigit() else "shape", o.style)
        for s in withheld_scenes
        for o in s.objects
    )
    assert set(styles) == {("digit", "type"), ("shape", "rounded"), ("shape", "twotone")}
    assert all(
        o.inner is not None for s in withheld_scenes for o in s.objects if o.style == "twotone"
    )


def test_some_training_scenes_hold_nothing_but_background_and_clutter(
    train_scenes: list[Scene],
) -> None:
    empty = [s for s in train_scenes if not s.objects]
    # 10 % are negatives by design; a few more when a photo leaves no spot with contrast.
    assert 0.04 <= len(empty) / len(train_scenes) <= 0.2
    assert any(s.clutter for s in empty)


def test_clutter_letters_are_unlabelled_and_clear_of_every_object(
    train_scenes: list[Scene],
) -> None:
    with_letters = [s for s in train_scenes if s.clutter]
    assert len(with_letters) >= 0.3 * len(train_scenes)
    for scene in with_letters:
        assert all(letter.label == "letter" for letter in scene.clutter)
        assert len(scene.annotations) == len(scene.objects)
        for letter in scene.clutter:
            for obj in scene.objects:
                assert not letter.box.overlaps(obj.box, gap=CONFIG.gap)


def test_clutter_characters_exclude_lookalikes_of_the_classes() -> None:
    for lookalike in "0Oo1IlL!|2Zz5Ss6Gb8B9gq7TCc":
        assert lookalike not in CLUTTER_CHARACTERS


def test_boxes_stay_tight_on_every_style(
    train_scenes: list[Scene], withheld_scenes: list[Scene]
) -> None:
    for scene in train_scenes + withheld_scenes:
        height, width = scene.image.shape[:2]
        for obj in scene.objects + scene.clutter:
            assert obj.box.problem(width, height) is None
            assert tight_box(obj.mask) == Box(0, 0, obj.box.width, obj.box.height)


def test_two_tone_shapes_show_both_colours_clearly(photos: PhotoLibrary) -> None:
    # No blur or fading here, so painted pixels can be compared exactly.
    plain = replace(style_set("withheld"), blur_share=0.0, faded_share=0.0, letter_share=0.0)
    seen = 0
    for i in range(60):
        scene = render_scene(np.random.default_rng([79, i]), CONFIG, plain, photos)
        for obj in scene.objects:
            if obj.inner is None or obj.inner_color is None:
                continue
            seen += 1
            region = scene.image[obj.box.ymin : obj.box.ymax, obj.box.xmin : obj.box.xmax]
            assert (region[obj.inner] == obj.inner_color).all()
            assert (region[obj.mask & ~obj.inner] == obj.color).all()
            assert abs(_luma(obj.inner_color) - _luma(obj.color)) >= MIN_CONTRAST
    assert seen >= 10


def test_blur_and_fading_happen_only_as_often_as_asked(photos: PhotoLibrary) -> None:
    flawless = replace(style_set("train"), blur_share=0.0, faded_share=0.0)
    flawed = replace(flawless, blur_share=1.0)
    for i in range(5):
        sharp = render_scene(np.random.default_rng([80, i]), CONFIG, flawless, photos)
        soft = render_scene(np.random.default_rng([80, i]), CONFIG, flawed, photos)
        assert sharp.annotations == soft.annotations  # the flaws come after the drawing
        assert (
            cv2.Laplacian(soft.image, cv2.CV_64F).var()
            < cv2.Laplacian(sharp.image, cv2.CV_64F).var()
        )


def test_rounded_and_perspective_glyphs_keep_the_requested_size() -> None:
    styles = replace(style_set("withheld").glyphs, perspective=1.0)
    for i, label in enumerate(["circle", "square", "triangle", "4", "7"] * 8):
        glyph = render_glyph(np.random.default_rng(i), label, 80, styles=styles)
        assert abs(max(glyph.mask.shape) - 80) <= 4, (label, glyph.style, glyph.mask.shape)


def test_photo_backgrounds_are_crops_of_the_library(photos: PhotoLibrary) -> None:
    on_photo = replace(style_set("train"), photo_share=1.0, negative_share=1.0, letter_share=0.0)
    no_flaws = replace(on_photo, blur_share=0.0, faded_share=0.0)
    scene = render_scene(np.random.default_rng(3), CONFIG, no_flaws, photos)
    assert not scene.objects
    # A ramp photo: brightness changes steadily along x in every crop.
    grey = scene.background.astype(np.float64).mean(axis=(0, 2))
    assert abs(np.corrcoef(np.arange(grey.size), grey)[0, 1]) > 0.9


def test_prepare_photos_splits_wallpapers_by_name_and_skips_shape_like_ones(tmp_path: Path) -> None:
    plasma, mate = tmp_path / "wallpapers", tmp_path / "mate"
    for name, size in (("Autumn", (320, 200)), ("Autumn", (640, 400)), ("Path", (320, 200))):
        folder = plasma / name / "contents" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str(folder / f"{size[0]}x{size[1]}.jpg"), gradient_photo(size[0])[: size[1], : size[0]]
        )
    (mate / "nature").mkdir(parents=True)
    cv2.imwrite(str(mate / "nature" / "Storm.jpg"), gradient_photo(1))
    cv2.imwrite(str(mate / "nature" / "Garden_1920x1080.jpg"), gradient_photo(2))
    cv2.imwrite(str(mate / "nature" / "ColorfulCups.jpg"), gradient_photo(3))  # circles: skipped
    roots = (plasma, mate)
    assert [w.name for w in find_wallpapers(roots)] == ["Autumn", "Garden", "Path", "Storm"]
    assert find_wallpapers(roots)[0].path.name == "640x400.jpg"  # the largest file
    counts = prepare_photos(tmp_path / "out", roots)
    assert counts == {"train": 2, "withheld": 2}
    assert {p.stem for p in (tmp_path / "out" / "withheld").iterdir()} <= WITHHELD_WALLPAPERS
    assert len(PhotoLibrary.load(tmp_path / "out" / "train")) == 2


def test_negatives_are_the_held_out_sample_photos(tmp_path: Path) -> None:
    written = write_negatives(tmp_path)
    assert [p.stem for p in written] == list(NEGATIVE_SAMPLES)
    assert len(written) >= 8
    assert all(cv2.imread(str(p)) is not None for p in written)
    assert not set(NEGATIVE_SAMPLES) & WITHHELD_WALLPAPERS


def test_hard_negatives_are_written_by_name_and_never_the_held_out_ones(tmp_path: Path) -> None:
    opencv, backgrounds = tmp_path / "opencv", tmp_path / "backgrounds"
    opencv.mkdir()
    backgrounds.mkdir()
    names = sorted(HARD_NEGATIVE_PHOTOS)
    for index, name in enumerate(names):
        folder = opencv if index % 2 else backgrounds
        cv2.imwrite(str(folder / f"{name}.jpg"), gradient_photo(index))
    cv2.imwrite(str(opencv / "smarties.png"), gradient_photo(1))  # circles: not a negative
    assert write_hard_negatives(tmp_path / "out", (opencv, backgrounds)) == len(names)
    assert sorted(p.stem for p in (tmp_path / "out").iterdir()) == names
    assert len(PhotoLibrary.load(tmp_path / "out")) == len(names)
    assert not HARD_NEGATIVE_PHOTOS & (set(NEGATIVE_SAMPLES) | WITHHELD_WALLPAPERS)

    (opencv / f"{names[1]}.jpg").unlink()
    with pytest.raises(MissingAssetError, match=f"not found .*: {names[1]}; .*opencv-doc"):
        write_hard_negatives(tmp_path / "again", (opencv, backgrounds))


def test_round_things_are_found_by_file_stem_or_wallpaper_folder(tmp_path: Path) -> None:
    """Plasma names a wallpaper by its folder (NAME/contents/images/WxH.jpg), the largest file."""
    opencv, plasma = tmp_path / "opencv", tmp_path / "wallpapers"
    opencv.mkdir()
    names = sorted(ROUND_THING_PHOTOS - {"ColorfulCups"})
    for index, name in enumerate(names):
        cv2.imwrite(str(opencv / f"{name}.jpg"), gradient_photo(index))
    images = plasma / "ColorfulCups" / "contents" / "images"
    images.mkdir(parents=True)
    cv2.imwrite(str(images / "64x48.jpg"), cv2.resize(gradient_photo(7), (64, 48)))
    cv2.imwrite(str(images / "400x300.jpg"), gradient_photo(7))
    assert write_round_things(tmp_path / "out", (opencv, plasma)) == len(ROUND_THING_PHOTOS)
    assert sorted(p.stem for p in (tmp_path / "out").iterdir()) == sorted(ROUND_THING_PHOTOS)
    cups = cv2.imread(str(tmp_path / "out" / "ColorfulCups.jpg"))
    assert cups is not None and cups.shape[:2] == gradient_photo(7).shape[:2]
    # Never the evaluation's photos, and never a scene's: only the verifier sees them.
    assert not ROUND_THING_PHOTOS & (
        set(NEGATIVE_SAMPLES) | WITHHELD_WALLPAPERS | HARD_NEGATIVE_PHOTOS
    )
    assert not {w.name for w in find_wallpapers()} & ROUND_THING_PHOTOS

    (opencv / "apple.jpg").unlink()
    with pytest.raises(MissingAssetError, match=r"round-thing photos not found .*: apple; "):
        write_round_things(tmp_path / "again", (opencv, plasma))


def test_a_photo_library_draws_from_every_folder_it_is_given(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, count in ((first, 2), (second, 3)):
        folder.mkdir()
        for index in range(count):
            cv2.imwrite(str(folder / f"{index}.jpg"), gradient_photo(index))
    assert len(PhotoLibrary.load(first, second)) == 5
    with pytest.raises(MissingAssetError, match=f"no photos in {tmp_path / 'none'}"):
        PhotoLibrary.load(first, tmp_path / "none")


def test_synth_cli_overrides_the_share_of_empty_scenes(tmp_path: Path) -> None:
    folders = [tmp_path / "a", tmp_path / "b"]
    for index, folder in enumerate(folders):
        folder.mkdir()
        cv2.imwrite(str(folder / "photo.jpg"), gradient_photo(index))
    for share, expected in (("1", 0), ("0", None)):
        code, _, err = run_cli(
            "data", "synth", "--out", tmp_path / share, "--images", "8", "--styles", "train",
            "--photos", folders[0], "--photos", folders[1], "--negative-share", share,
            "--no-progress",
        )  # fmt: skip
        assert code == 0, err
        objects = [len(r.objects) for r in load_dataset(tmp_path / share).images]
        if expected is None:
            assert all(count > 0 for count in objects)
        else:
            assert objects == [0] * 8
    code, _, err = run_cli(
        "data", "synth", "--out", tmp_path / "bad", "--images", "1", "--negative-share", "1.5"
    )
    assert code == 2 and "--negative-share must be between 0 and 1" in err


def test_synth_cli_draws_the_withheld_set_on_photos(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), gradient_photo(0))
    code, out, err = run_cli(
        "data", "synth", "--out", tmp_path / "w", "--images", "6", "--styles", "withheld",
        "--photos", folder, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "wrote 6 images" in out
    qualities = {p.stat().st_size for p in (tmp_path / "w" / "images").iterdir()}
    assert len(qualities) == 6
    assert len(load_dataset(tmp_path / "w").images) == 6


def test_synth_cli_names_a_missing_photo_folder(tmp_path: Path) -> None:
    code, _, err = run_cli(
        "data", "synth", "--out", tmp_path / "w", "--images", "1", "--photos", tmp_path / "none",
    )  # fmt: skip
    assert code == 2
    assert f"no photos in {tmp_path / 'none'}" in err


def test_a_style_set_without_fonts_cannot_ask_for_typeset_digits() -> None:
    train = style_set("train")
    with pytest.raises(ValueError, match="needs font files"):
        replace(train.glyphs, fonts=())
    assert isinstance(StyleSet("x", train.glyphs), StyleSet)


def test_sticker_photos_paste_cut_outs_and_skip_clip_art(tmp_path: Path) -> None:
    root = tmp_path / "stamps"
    opaque_red = np.zeros((40, 30, 4), np.uint8)
    opaque_red[5:35, 5:25] = (0, 0, 255, 255)  # BGRA: a red patch inside a transparent margin
    for relative in ("animals/birds/robin.png", "people/fireman.png",
                     "animals/birds/cartoon/tweety.png", "food/fruit/apple.png"):  # fmt: skip
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / relative), opaque_red)
    cv2.imwrite(str(root / "animals" / "flat.png"), opaque_red[:, :, :3])  # no alpha: unusable
    assert [p.name for p in find_stickers(root)] == ["robin.png", "flat.png", "fireman.png"]

    grey = PhotoLibrary([np.full((300, 400, 3), 128, np.uint8)])
    assert compose_sticker_photos(tmp_path / "out", grey, 4, seed=1, root=root) == 4
    for path in sorted((tmp_path / "out").iterdir()):
        image = cv2.imread(str(path))
        red = (image[:, :, 2] > 200) & (image[:, :, 1] < 60)
        grey_left = np.abs(image.astype(int) - 128).max(axis=2) < 12
        assert red.sum() > 100 and grey_left.mean() > 0.3, path.name  # stickers on the photo

    with pytest.raises(MissingAssetError, match="tuxpaint-stamps-default"):
        compose_sticker_photos(tmp_path / "none", grey, 1, seed=1, root=tmp_path / "missing")
