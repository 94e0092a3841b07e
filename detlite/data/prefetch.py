"""Host-to-device copies of batches that overlap with compute."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        key: value.to(device, non_blocking=True) if isinstance(value, Tensor) else value
        for key, value in batch.items()
    }


class DevicePrefetcher:
    """Moves batches (dicts of tensors) to `device`, copying batch i+1 while batch i computes.

    On CUDA the copies run on a side stream from pinned memory (`non_blocking=True`); the compute
    stream waits for a batch's copy only when that batch is handed out, and the tensors are
    recorded on the compute stream so the allocator does not recycle them early. On any other
    device this is a plain `.to(device)` per batch. Non-tensor values pass through unchanged.
    """

    def __init__(self, batches: Iterable[dict[str, Any]], device: torch.device | str) -> None:
        self.batches = batches
        self.device = torch.device(device)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.device.type != "cuda":
            for batch in self.batches:
                yield _to_device(batch, self.device)
            return

        copy_stream = torch.cuda.Stream(self.device)
        source = iter(self.batches)

        def start_copy() -> dict[str, Any] | None:
            batch = next(source, None)
            if batch is None:
                return None
            with torch.cuda.stream(copy_stream):
                return _to_device(batch, self.device)

        ready = start_copy()
        while ready is not None:
            compute_stream = torch.cuda.current_stream(self.device)
            compute_stream.wait_stream(copy_stream)
            for value in ready.values():
                if isinstance(value, Tensor):
                    value.record_stream(compute_stream)
            batch, ready = ready, start_copy()
            yield batch
