"""Open Inference Protocol v2 requests as clients send them, for tests and benchmarks."""

from __future__ import annotations

import json


def v2_binary_request(image: bytes) -> tuple[bytes, dict[str, str]]:
    """One image with the binary tensor data extension, binary outputs asked for.

    Returns the body (JSON header, then the element: a 4-byte little-endian
    length and the JPEG) and the headers that say where the JSON ends.
    """
    element = len(image).to_bytes(4, "little") + image
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(element)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + element, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
