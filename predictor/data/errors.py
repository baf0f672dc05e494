"""The one exception type for bad dataset input."""

from __future__ import annotations

from pathlib import Path

from predictor.errors import PredictorError


class DatasetError(PredictorError):
    """A dataset file is missing, malformed or inconsistent.

    The message always starts with the offending file, then the line (and column) when the
    format has lines, or the JSON path / XML element, then the problem, e.g.
    ``data/labels/img1.txt:3: expected 5 fields (class cx cy w h), got 4``.
    """

    def __init__(
        self,
        path: Path | str,
        problem: str,
        *,
        line: int | None = None,
        column: int | None = None,
        where: str | None = None,
    ) -> None:
        self.path = str(path)
        self.problem = problem
        self.line = line
        self.column = column
        self.where = where
        location = self.path
        if line is not None:
            location += f":{line}"
            if column is not None:
                location += f":{column}"
        message = f"{location}: {where}: {problem}" if where else f"{location}: {problem}"
        super().__init__(message)


class MissingAssetError(PredictorError):
    """A font family or photo folder the scene generator was asked to use is not there.

    The message names what is missing and how to install it.
    """
