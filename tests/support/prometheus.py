"""Reading the server's /metrics text in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 when none).

    Summing over the other labels reads a per-model series (e.g. the
    ``model`` label of queue and batch metrics) as the server's total.
    """
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
