"""What a session has been doing lately: the statement rate, its recent errors
and the rows its last statement returned (anomaly features that belong to
the session, not to a statement)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.anomaly.features import ERROR_WINDOW
from proxy.anomaly.features import RATE_WINDOW_SECONDS as RATE_WINDOW


@dataclass
class SessionActivity:
    clock: Callable[[], float] = time.monotonic
    last_rows: int = 0
    _outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=ERROR_WINDOW))
    _times: deque[float] = field(default_factory=deque)

    def statement(self, refused: bool) -> None:
        now = self.clock()
        self._times.append(now)
        while self._times and now - self._times[0] > RATE_WINDOW:
            self._times.popleft()
        self._outcomes.append(refused)

    def error(self) -> None:
        if self._outcomes:
            self._outcomes[-1] = True
        else:
            self._outcomes.append(True)

    def completed(self, rows: int) -> None:
        self.last_rows = rows

    @property
    def recent_errors(self) -> int:
        return sum(self._outcomes)

    @property
    def statements_per_second(self) -> float:
        return len(self._times) / RATE_WINDOW
