"""The models a server serves, by name; the first is the default.

The original route (``POST /predict``) answers with the default model unless
the request names another; the v2 routes name theirs in the path. Readiness
is all or nothing: the server is ready when every model is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

from predictor.errors import ModelNotFound
from predictor.service.service import DetectionService


class ModelRegistry:
    """Detection services by name, in the order configured."""

    def __init__(self, services: Sequence[DetectionService]) -> None:
        if not services:
            raise ValueError("a registry needs at least one model")
        self._services = {service.name: service for service in services}
        if len(self._services) != len(services):
            raise ValueError("two models share a name")
        self.default = services[0]

    def __iter__(self) -> Iterator[DetectionService]:
        return iter(self._services.values())

    def __len__(self) -> int:
        return len(self._services)

    @property
    def names(self) -> list[str]:
        """The models' names, the default first."""
        return list(self._services)

    def get(self, name: str | None = None) -> DetectionService:
        """The model called ``name`` (the default for None); `ModelNotFound` otherwise."""
        if name is None:
            return self.default
        service = self._services.get(name)
        if service is None:
            served = ", ".join(repr(n) for n in self._services)
            raise ModelNotFound(f"unknown model {name!r}; this server serves {served}")
        return service

    def start(self) -> None:
        """Start every model's workers."""
        for service in self:
            service.start()

    async def stop(self) -> None:
        """Stop admitting everywhere; let every model finish its admitted images."""
        # Together: every model refuses new work at once and shares one grace period.
        await asyncio.gather(*(service.stop() for service in self))

    def not_ready_reason(self) -> str | None:
        """None when every model is ready; else the first model's reason, naming it."""
        for service in self:
            reason = service.not_ready_reason()
            if reason is not None:
                return reason if len(self) == 1 else f"model {service.name!r}: {reason}"
        return None

    @property
    def admitted_total(self) -> int:
        """Detection images admitted since start, over all models."""
        return sum(service.batcher.admitted_total for service in self)
