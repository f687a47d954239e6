"""Finish events: what the ratio gauges count, and what the state file keeps of the last hour's finishes.

Runs of one label set that finish with one status at one moment (one tick of the loop, one `now`) are one
event with a count, so that a burst of pushes is a few events in memory and in the state file, not one per
run. Pure: time is passed in.
"""

from __future__ import annotations

from collections import deque

from exporter.aggregates import LabelValues
from exporter.metrics_spec import RATIO_WINDOWS
from exporter.runstate import Finish


class FinishWindows:
    def __init__(self) -> None:
        self.events: deque[Finish] = deque()  # the longest window's finish events, as persisted
        self._window_events: dict[str, deque[Finish]] = {w: deque() for w in RATIO_WINDOWS}
        self._window_totals: dict[tuple[str, LabelValues], list[int]] = {}  # [finished, failed, expired]
        # The events of the latest moment, by (labels, status): a later finish then joins its event.
        self._moment = float("nan")
        self._moment_events: dict[tuple[LabelValues, str], Finish] = {}

    def record(self, finish: Finish) -> Finish:
        """Add a finish event; one of the same moment, labels and status absorbs it. Returns the event that
        holds it."""
        if finish.at != self._moment:
            self._moment, self._moment_events = finish.at, {}
        held = self._moment_events.setdefault((finish.labels, finish.status), finish)
        if held is not finish:
            held.count += finish.count
        else:
            self.events.append(finish)
        for window in RATIO_WINDOWS:
            if held is finish:
                self._window_events[window].append(finish)
            self._tally(window, finish, +1)
        return held

    def new_moment(self) -> None:
        """Events already written or dropped from a window absorb nothing more."""
        self._moment, self._moment_events = float("nan"), {}

    def prune(self, cutoff: float) -> bool:
        """Drop the events older than `cutoff` (the longest window); True if any went."""
        if not self.events or self.events[0].at >= cutoff:
            return False
        while self.events and self.events[0].at < cutoff:
            self.events.popleft()
        self.new_moment()
        return True

    def ratios(self, now: float) -> dict[tuple[str, ...], float]:
        """(kind 'failure'|'expiry', window, *labels) -> ratio among runs finished within the window."""
        for window, seconds in RATIO_WINDOWS.items():
            events = self._window_events[window]
            while events and events[0].at < now - seconds:
                self._tally(window, events.popleft(), -1)
                self.new_moment()
        out: dict[tuple[str, ...], float] = {}
        for (window, labels), (total, failed, expired) in self._window_totals.items():
            if total:
                out[("failure", window, *labels)] = failed / total
                out[("expiry", window, *labels)] = expired / total
        return out

    def _tally(self, window: str, finish: Finish, sign: int) -> None:
        totals = self._window_totals.setdefault((window, finish.labels), [0, 0, 0])
        totals[0] += sign * finish.count
        totals[1] += sign * finish.count * (finish.status == "failed")
        totals[2] += sign * finish.count * (finish.status == "expired")
