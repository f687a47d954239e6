"""Fuzz the paths from the network into the store: pushed bodies and webhook deliveries, with lone
surrogates, 200 KB values and 100,000-deep nesting among their inputs, go through parsing, the tracker, a
commit to the state file and a /metrics render. None may raise; the state file reloads.

FUZZ_EXAMPLES sets the examples per test, as in tests/test_fuzz.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.metrics import ExporterState, SnapshotCollector, build_families
from exporter.model import snapshot_problem
from exporter.sources.push import parse_items, split_body
from exporter.sources.webhooks import parse_event
from exporter.store import Store
from exporter.tracker import Tracker
from tests.test_fuzz import FUZZ, hostile_strings, json_values, push_items

NOW = 1_800_000_000.0
LABELS = ["assistant_id", "model"]
DEEP = b"[" * 100_000 + b"]" * 100_000

hostile_runs = st.fixed_dictionaries(
    {"id": st.one_of(st.text(min_size=1, max_size=8), hostile_strings),
     "status": st.sampled_from(["completed", "failed", "incomplete", "in_progress", "queued"])},
    optional={key: st.one_of(hostile_strings, json_values) for key in ("assistant_id", "model", "thread_id")}
    | {"last_error": st.fixed_dictionaries({"code": st.one_of(hostile_strings, json_values)}),
       "incomplete_details": st.fixed_dictionaries({"reason": st.one_of(hostile_strings, json_values)}),
       "object": st.sampled_from(["response", "thread.run"])},
)
bodies = st.one_of(
    st.lists(st.one_of(hostile_runs, push_items), max_size=6).map(lambda items: json.dumps(items).encode()),
    st.sampled_from([DEEP, b'[{"id": "r", "status": "completed", "model": ' + DEEP + b"}]",
                     b'[{"id": "r\\ud800", "status": "completed"}, {"id": "ok", "status": "completed"}]']),
)


class Pipeline:
    def __init__(self, path: Path) -> None:
        self.store = Store(path, LABELS)
        self.tracker: Tracker = self.store.load().tracker(LABELS, 3600)

    def apply_and_commit(self, runs: list) -> None:  # type: ignore[type-arg]
        for run in runs:
            assert snapshot_problem(run) is None
            self.tracker.observe_run(run, NOW)
        self.store.commit(self.tracker.take_changes())
        collector = SnapshotCollector()
        collector.update(build_families(self.tracker, ExporterState(), NOW, ("push", "webhooks"), ()))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        generate_latest(registry).decode("utf-8")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    path = tmp_path_factory.mktemp("fuzz_network") / "s.db"
    p = Pipeline(path)
    yield p
    p.store.close()
    reloaded = Store(path, LABELS)
    reloaded.load().tracker(LABELS, 3600)  # a restart loads what the fuzzer committed
    reloaded.close()


@FUZZ
@given(body=bodies, ndjson=st.booleans())
def test_pushed_bodies_reach_the_store_and_the_page(pipeline: Pipeline, body: bytes, ndjson: bool) -> None:
    items = split_body(body.replace(b"}, {", b"}\n{") if ndjson else body, ndjson)
    if items is None:
        return
    parsed = parse_items(items, NOW)
    assert len(parsed.runs) + len(parsed.invalid) == len(items)
    pipeline.apply_and_commit(parsed.runs)


@FUZZ
@given(data_id=st.one_of(hostile_strings, json_values), kind=st.sampled_from(["response.completed",
                                                                             "response.failed"]),
       deep=st.booleans())
def test_webhook_events_reach_the_store(pipeline: Pipeline, data_id: object, kind: str, deep: bool) -> None:
    body = (b'{"type": "response.completed", "created_at": 5, "data": ' + DEEP + b"}" if deep else
            json.dumps({"type": kind, "created_at": 5, "data": {"id": data_id}}).encode())
    event = parse_event(body)
    if event is not None and event[1] is not None:
        pipeline.apply_and_commit([event[1]])
