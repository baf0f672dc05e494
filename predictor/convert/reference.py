"""Run a graph model in TensorFlow.js itself (node, pure-JavaScript CPU backend).

The reference the converter is checked against: ``tools/tfjs/run_graph.cjs``
with ``@tensorflow/tfjs`` as ``make tfjs-reference`` installs it (``npm ci``
into ``build/node``). Never ``tfjs-node``: it downloads a native binary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from predictor.convert.errors import ConversionError

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "tfjs" / "run_graph.cjs"
NODE_MODULES = REPO / "build" / "node" / "node_modules"

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ReferenceRun:
    """Outputs of one execution, by requested name, and how long ``execute`` took."""

    outputs: dict[str, FloatArray]
    milliseconds: float


def reference_available(node_modules: Path = NODE_MODULES) -> str | None:
    """None when TF.js can run here, else the reason it cannot."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (node_modules / "@tensorflow" / "tfjs").is_dir():
        return f"@tensorflow/tfjs is not installed in {node_modules} (run `make tfjs-reference`)"
    return None


def run_tfjs(
    model_json: Path,
    runs: Sequence[Mapping[str, FloatArray]],
    outputs: Sequence[str],
    node_modules: Path = NODE_MODULES,
    timeout: float = 600.0,
) -> list[ReferenceRun]:
    """Execute ``model_json`` once per entry of ``runs`` (input name -> array)."""
    reason = reference_available(node_modules)
    if reason is not None:
        raise ConversionError(f"cannot run TensorFlow.js: {reason}")
    with tempfile.TemporaryDirectory(prefix="tfjs-ref-") as tmp:
        work = Path(tmp)
        request_runs = []
        for index, inputs in enumerate(runs):
            specs: dict[str, dict[str, object]] = {}
            for name, array in inputs.items():
                file = work / f"in{index}-{len(specs)}.f32"
                np.ascontiguousarray(array, dtype="<f4").tofile(file)
                specs[name] = {"shape": list(array.shape), "file": str(file)}
            out_prefix = str(work / f"out{index}-")
            request_runs.append(
                {"inputs": specs, "outputs": list(outputs), "out_prefix": out_prefix}
            )
        request = {
            "model": str(Path(model_json).resolve()),
            "node_modules": str(node_modules.resolve()),
            "runs": request_runs,
        }
        request_path = work / "request.json"
        request_path.write_text(json.dumps(request), encoding="utf-8")
        env = dict(os.environ)
        # TF.js prints a hint to install tfjs-node; it is not wanted here.
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        completed = subprocess.run(
            ["node", str(SCRIPT), str(request_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if completed.returncode != 0:
            raise ConversionError(f"TensorFlow.js failed: {completed.stderr.strip()[-2000:]}")
        results = []
        for line in completed.stdout.splitlines():
            if not line.startswith("{"):
                continue
            report = json.loads(line)
            arrays = {
                spec["name"]: np.fromfile(spec["file"], dtype="<f4").reshape(spec["shape"])
                for spec in report["outputs"]
            }
            results.append(ReferenceRun(arrays, float(report["ms"])))
    if len(results) != len(runs):
        raise ConversionError(f"TensorFlow.js answered {len(results)} of {len(runs)} runs")
    return results
