"""Bounded cardinality: a cap on the distinct values of each label whose values come from the network.

Like kube-state-metrics' allow-lists and the old error-code cap: the first `limit` distinct values of a label
are admitted and stay admitted; later new values become `other`, and the caller counts the run in
assistants_exporter_label_values_overflow_total{label}. The admitted sets are rebuilt from the label sets of
the loaded counters, so the caps hold across restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

OTHER = "other"
# label -> default cap; the flags --max-assistant-ids, --max-models, --max-error-codes, --max-incomplete-reasons.
DEFAULT_LIMITS: dict[str, int] = {"assistant_id": 200, "model": 50, "code": 64, "reason": 32}
CAPPED_LABELS: tuple[str, ...] = tuple(DEFAULT_LIMITS)


@dataclass(slots=True)
class LabelCaps:
    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    admitted: dict[str, set[str]] = field(default_factory=dict)

    def seed(self, label: str, values: Iterable[str]) -> None:
        """Admit values already in use (loaded counters, the documented zeros), past the cap if need be."""
        self.admitted.setdefault(label, set()).update(v for v in values if v != OTHER)

    def value(self, label: str, value: str) -> tuple[str, bool]:
        """(the label value to use, whether it overflowed into `other`)."""
        seen = self.admitted.setdefault(label, set())
        if value in seen or value == OTHER or value == "":
            return value, False
        if len(seen) >= self.limits.get(label, DEFAULT_LIMITS.get(label, 0)):
            return OTHER, True
        seen.add(value)
        return value, False

    def set_limits(self, limits: Mapping[str, int]) -> None:
        self.limits.update(limits)
