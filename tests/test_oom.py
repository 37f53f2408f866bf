"""OOM back-off: halve the batch, redo only the failed batch, every item exactly once, clear give-up."""

from __future__ import annotations

import pytest
import torch

from tortoise_xpu.backends.cpu import CPUBackend
from tortoise_xpu.backends.oom import is_oom_error, run_with_backoff
from tortoise_xpu.errors import OutOfMemory, TortoiseError


class CountingBackend(CPUBackend):
    def __init__(self):
        super().__init__()
        self.emptied = 0

    def empty_cache(self) -> None:
        self.emptied += 1


def _oom(kind: str) -> BaseException:
    if kind == "torch":
        return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if kind == "xpu":
        return RuntimeError("XPU out of memory. Tried to allocate 1.50 GiB (GPU 0; 15.11 GiB total capacity)")
    if kind == "hip":
        return RuntimeError("HIP out of memory. Tried to allocate 512.00 MiB")
    return RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")


@pytest.mark.parametrize("kind", ["torch", "xpu", "hip", "cpu"])
def test_first_two_attempts_oom_then_work_completes_at_a_quarter(kind):
    items = list(range(32))
    calls: list[list[int]] = []
    backend = CountingBackend()
    backoffs = []
    progress = []

    def work(batch):
        calls.append(list(batch))
        if len(calls) <= 2:
            raise _oom(kind)
        return [x * 10 for x in batch]

    out = run_with_backoff(work, items, 16, backend=backend, on_backoff=lambda a, b: backoffs.append((a, b)),
                           on_progress=lambda done, total: progress.append((done, total)))
    assert out == [x * 10 for x in items]  # every item, once, in order
    assert [len(c) for c in calls[:2]] == [16, 8]
    assert all(len(c) == 4 for c in calls[2:])  # a quarter of the first batch size
    assert backoffs == [(16, 8), (8, 4)]
    assert backend.emptied == 2
    produced = [x for c in calls[2:] for x in c]
    assert sorted(produced) == items and len(produced) == len(set(produced))
    assert progress[-1] == (32, 32) and [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_items_already_done_are_not_redone():
    seen: list[int] = []
    failed = {"once": False}

    def work(batch):
        if batch[0] == 8 and not failed["once"]:
            failed["once"] = True
            raise _oom("xpu")
        seen.extend(batch)
        return batch

    out = run_with_backoff(work, list(range(16)), 8)
    assert out == list(range(16))
    assert seen == list(range(16))  # 0-7 once, 8-15 once (as two halves)


def test_ragged_last_batch_and_empty_input():
    assert run_with_backoff(lambda b: [x + 1 for x in b], list(range(10)), 4) == list(range(1, 11))
    assert run_with_backoff(lambda b: b, [], 4) == []


def test_gives_up_at_batch_one_with_advice():
    def work(batch):
        raise _oom("torch")

    with pytest.raises(OutOfMemory) as info:
        run_with_backoff(work, list(range(4)), 4, backend=CPUBackend())
    message = str(info.value)
    for hint in ("--low-vram", "--batch-size", "--device cpu", "batch size 1", "on cpu"):
        assert hint in message
    assert isinstance(info.value, TortoiseError) and info.value.exit_code == 1
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


def test_other_errors_pass_through_untouched():
    def work(batch):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        run_with_backoff(work, [1, 2], 2)


def test_wrong_result_count_and_bad_batch_size():
    with pytest.raises(ValueError, match="results for a batch"):
        run_with_backoff(lambda b: b[:1], [1, 2, 3], 3)
    with pytest.raises(ValueError, match="batch_size"):
        run_with_backoff(lambda b: b, [1], 0)


def test_is_oom_error():
    assert is_oom_error(torch.OutOfMemoryError("x"))
    assert is_oom_error(torch.cuda.OutOfMemoryError("x"))
    assert is_oom_error(RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"))
    assert not is_oom_error(RuntimeError("index out of range"))
    assert not is_oom_error(ValueError("out of memory"))  # not a runtime failure


def test_a_real_tensor_workload_through_the_backoff():
    backend = CPUBackend()
    weights = torch.randn(8, 8)
    rows = [torch.randn(8) for _ in range(12)]
    attempts = {"n": 0}

    def work(batch):
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise _oom("torch")
        return list(torch.stack(batch) @ weights)

    out = run_with_backoff(work, rows, 12, backend=backend)
    expected = torch.stack(rows) @ weights
    assert torch.allclose(torch.stack(out), expected)
