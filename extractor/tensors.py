"""Dataclasses of tensors that move as one: to a device, into pinned memory, and between processes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor

# A tensor sent to another process travels through shared memory, which costs the receiver (the main process,
# for a loader worker's batch) about 0.2 ms per tensor; below this size it is cheaper sent by value.
SHARED_MEMORY_BYTES = 1 << 20


class Tensors:
    """A dataclass mixin: its tensor fields, and those of nested `Tensors`, move together; other fields (host
    columns) stay as they are."""

    def to(self, device: torch.device | str) -> Self:
        """On `device`; onto a GPU without waiting for the copies (they queue on its stream)."""
        device = torch.device(device)
        return self.mapped(lambda t: t.to(device, non_blocking=device.type != "cpu"))

    def pin_memory(self) -> Self:
        """Called by a DataLoader's pinning thread on CUDA."""
        return self.mapped(Tensor.pin_memory)

    def mapped(self, fn: Callable[[Tensor], Tensor]) -> Self:
        """A copy with `fn` applied to each of its tensors, nested ones included."""
        return replace(self, **{f.name: _mapped(getattr(self, f.name), fn) for f in fields(self)})

    def __reduce__(self) -> tuple:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        small = [k for k, v in values.items() if _by_value(v)]
        return _rebuilt, (type(self), values | {k: values[k].numpy() for k in small}, small)


def _by_value(value: Any) -> bool:
    """Whether a field is a small host tensor that numpy can hold (pickled by value)."""
    return (
        isinstance(value, Tensor)
        and value.device.type == "cpu"
        and not value.requires_grad
        and value.dtype != torch.bfloat16
        and value.nbytes < SHARED_MEMORY_BYTES
    )


def _mapped(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    return value.mapped(fn) if isinstance(value, Tensors) else value


def _rebuilt(cls: type, values: dict[str, Any], small: list[str]) -> Any:
    return cls(**(values | {k: torch.from_numpy(np.asarray(values[k])) for k in small}))
