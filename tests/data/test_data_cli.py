"""`predictor data synth` and `predictor data convert`, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from predictor.data import CLASSES, load_dataset

from .helpers import build_parser, run_cli, run_cli_subprocess


def test_synth_then_convert_in_process(tmp_path: Path) -> None:
    code, out, err = run_cli(
        "data", "synth", "--out", tmp_path / "s", "--images", "4", "--seed", "8",
        "--format", "yolo", "--min-side", "128", "--max-side", "200", "--no-progress",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith("wrote 4 images with ") and out.rstrip().endswith(
        f"(yolo) to {tmp_path / 's'}"
    )
    synthesized = load_dataset(tmp_path / "s", "yolo")
    assert synthesized.classes == CLASSES
    assert all(128 <= r.width <= 200 and 128 <= r.height <= 200 for r in synthesized.images)

    code, out, err = run_cli(
        "data", "convert", "--in", tmp_path / "s", "--out", tmp_path / "c", "--format", "coco"
    )
    assert (code, err) == (0, "")
    converted = load_dataset(tmp_path / "c", "coco")
    assert [r.objects for r in converted.images] == [r.objects for r in synthesized.images]
    assert (tmp_path / "c" / "images" / "000003.jpg").stat().st_nlink == 2  # hard-linked


def test_synth_in_a_real_process_shows_progress_on_stderr(tmp_path: Path) -> None:
    result = run_cli_subprocess(
        "data", "synth", "--out", tmp_path / "s", "--images", "3", "--seed", "1",
        "--min-side", "64", "--max-side", "64",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "synth: 100%" in result.stderr and "3/3" in result.stderr
    assert result.stdout.startswith("wrote 3 images with ")
    assert len(load_dataset(tmp_path / "s", "voc").images) == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--min-side", "300", "--max-side", "200"], "error: bad image size options"),
        (["--quality", "0"], "error: --quality must be between 1 and 100"),
    ],
)
def test_synth_rejects_bad_options(tmp_path: Path, options: list[str], message: str) -> None:
    code, _, err = run_cli("data", "synth", "--out", tmp_path / "s", "--images", "1", *options)
    assert code == 2 and err.startswith(message)
    assert not (tmp_path / "s").exists()


def test_synth_refuses_a_non_empty_output(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("keep me")
    code, _, err = run_cli("data", "synth", "--out", tmp_path / "s", "--images", "1")
    assert code == 2 and "s: output directory exists and is not empty" in err
    assert (tmp_path / "s" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "argv",
    [
        ["data"],
        ["data", "synth", "--images", "1"],
        ["data", "synth", "--out", "x", "--images", "-1"],
        ["data", "convert", "--in", "a", "--out", "b", "--format", "pascal"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err
