"""The server's counters and gauges, written out in the Prometheus text exposition format."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

__all__ = ["Metrics", "TTFA_BUCKETS"]

#: Histogram buckets of time to first audio, in seconds.
TTFA_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Thread-safe counters for ``/metrics``: requests by status, queue depth, batch occupancy,
    time to first audio, AR codes per second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = defaultdict(int)
        self.queue_depth = 0          # requests accepted and not yet decoding
        self.active_rows = 0          # AR rows decoding now
        self.capacity = 0             # AR rows one batch can hold
        self.in_flight = 0            # requests accepted and not finished
        self.steps = 0                # AR batch steps run
        self.occupied_row_steps = 0   # sum over steps of the rows in the batch
        self.codes = 0                # AR codes sampled
        self.ar_seconds = 0.0         # time spent in AR steps
        self.cancelled = 0
        self.oom_backoffs = 0
        self.ttfa_count = 0
        self.ttfa_sum = 0.0
        self.ttfa_buckets = [0] * len(TTFA_BUCKETS)
        self.started = time.time()

    def count_request(self, status: int) -> None:
        with self._lock:
            self.requests[str(status)] += 1

    def observe_ttfa(self, seconds: float) -> None:
        with self._lock:
            self.ttfa_count += 1
            self.ttfa_sum += seconds
            for i, b in enumerate(TTFA_BUCKETS):
                if seconds <= b:
                    self.ttfa_buckets[i] += 1

    def observe_step(self, rows: int, codes: int, seconds: float) -> None:
        with self._lock:
            self.steps += 1
            self.occupied_row_steps += rows
            self.codes += codes
            self.ar_seconds += seconds

    def add(self, name: str, delta: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + delta)

    def set(self, name: str, value: int) -> None:
        with self._lock:
            setattr(self, name, value)

    def render(self) -> str:
        """The Prometheus text format (version 0.0.4)."""
        with self._lock:
            lines = [
                "# HELP tortoise_requests_total Speech requests answered, by HTTP status.",
                "# TYPE tortoise_requests_total counter",
                *[f'tortoise_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())],
                "# HELP tortoise_queue_depth Requests accepted and waiting to join the AR batch.",
                "# TYPE tortoise_queue_depth gauge",
                f"tortoise_queue_depth {self.queue_depth}",
                "# HELP tortoise_in_flight Requests accepted and not yet finished.",
                "# TYPE tortoise_in_flight gauge",
                f"tortoise_in_flight {self.in_flight}",
                "# HELP tortoise_batch_rows AR rows decoding now.",
                "# TYPE tortoise_batch_rows gauge",
                f"tortoise_batch_rows {self.active_rows}",
                "# HELP tortoise_batch_capacity AR rows one running batch holds.",
                "# TYPE tortoise_batch_capacity gauge",
                f"tortoise_batch_capacity {self.capacity}",
                "# HELP tortoise_batch_occupancy Mean share of the batch's rows in use per AR step.",
                "# TYPE tortoise_batch_occupancy gauge",
                f"tortoise_batch_occupancy {self._occupancy():.6f}",
                "# HELP tortoise_ar_steps_total AR batch steps run.",
                "# TYPE tortoise_ar_steps_total counter",
                f"tortoise_ar_steps_total {self.steps}",
                "# HELP tortoise_ar_codes_total AR codes sampled.",
                "# TYPE tortoise_ar_codes_total counter",
                f"tortoise_ar_codes_total {self.codes}",
                "# HELP tortoise_ar_seconds_total Seconds spent in AR steps.",
                "# TYPE tortoise_ar_seconds_total counter",
                f"tortoise_ar_seconds_total {self.ar_seconds:.6f}",
                "# HELP tortoise_ar_codes_per_second AR codes sampled per second of AR stepping.",
                "# TYPE tortoise_ar_codes_per_second gauge",
                f"tortoise_ar_codes_per_second {self.codes / self.ar_seconds if self.ar_seconds else 0.0:.3f}",
                "# HELP tortoise_cancelled_total Requests whose client went away before the end.",
                "# TYPE tortoise_cancelled_total counter",
                f"tortoise_cancelled_total {self.cancelled}",
                "# HELP tortoise_oom_backoffs_total Times an AR step ran out of memory and was halved.",
                "# TYPE tortoise_oom_backoffs_total counter",
                f"tortoise_oom_backoffs_total {self.oom_backoffs}",
                "# HELP tortoise_time_to_first_audio_seconds From request to the first audio produced.",
                "# TYPE tortoise_time_to_first_audio_seconds histogram",
                *[f'tortoise_time_to_first_audio_seconds_bucket{{le="{b}"}} {n}'
                  for b, n in zip(TTFA_BUCKETS, self.ttfa_buckets)],
                f'tortoise_time_to_first_audio_seconds_bucket{{le="+Inf"}} {self.ttfa_count}',
                f"tortoise_time_to_first_audio_seconds_sum {self.ttfa_sum:.6f}",
                f"tortoise_time_to_first_audio_seconds_count {self.ttfa_count}",
            ]
        return "\n".join(lines) + "\n"

    def _occupancy(self) -> float:
        if not self.steps or not self.capacity:
            return 0.0
        return self.occupied_row_steps / (self.steps * self.capacity)
