"""/metrics pages rendered on demand: none without a scrape, one per change however many scrapes share it."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.registry import CollectorRegistry

from exporter.exposition import Families
from exporter.metrics import ExporterState, SnapshotCollector, build_families, families, snapshot
from exporter.model import RunSnapshot
from exporter.pages import MetricsPages
from exporter.tracker import Tracker
from tests.test_server import Flags, request, running

T0 = 1_700_000_000
TEXT, TEXT_TYPE = choose_encoder("")
OM, OM_TYPE = choose_encoder("application/openmetrics-text; version=1.0.0")


class Fleet:
    """A lazily built set of families, counting builds and the threads they ran on."""

    def __init__(self) -> None:
        self.value = 1.0
        self.builds = 0
        self.threads: set[int] = set()
        self.fail = False
        self.after_first_build: Callable[[], object] = lambda: None

    def build(self) -> list[Metric]:
        self.builds += 1
        self.threads.add(threading.get_ident())
        if self.fail:
            raise RuntimeError("broken build")
        if self.builds == 1:
            self.after_first_build()
        runs = GaugeMetricFamily("assistants_runs", "runs", labels=["status"])
        runs.add_metric(["queued"], self.value)
        finished = CounterMetricFamily("assistants_runs_finished", "finished", labels=["status"])
        finished.add_metric(["failed"], 2)
        return [runs, finished]


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()


@pytest.fixture
def collector() -> SnapshotCollector:
    return SnapshotCollector()


@pytest.fixture
def registry(collector: SnapshotCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def _pages(registry: CollectorRegistry, collector: SnapshotCollector) -> MetricsPages:
    pages = MetricsPages(registry)
    collector.add_listener(pages.changed)
    return pages


def test_changes_without_scrapes_build_and_render_nothing(
    registry: CollectorRegistry, collector: SnapshotCollector, fleet: Fleet
) -> None:
    pages = _pages(registry, collector)

    async def main() -> bytes:
        for value in range(50):
            fleet.value = value
            collector.update_lazy(fleet.build)
            await asyncio.sleep(0)  # let anything scheduled run
        assert fleet.builds == 0 and pages.renders == 0
        return await pages.page(TEXT_TYPE, TEXT, False)

    body = asyncio.run(main())
    assert b'assistants_runs{status="queued"} 49.0' in body
    assert fleet.builds == 1 and pages.renders == 1


def test_concurrent_scrapes_after_a_change_share_one_render(
    registry: CollectorRegistry, collector: SnapshotCollector, fleet: Fleet
) -> None:
    pages = _pages(registry, collector)

    async def main() -> list[bytes]:
        collector.update_lazy(fleet.build)
        return await asyncio.gather(*(pages.page(TEXT_TYPE, TEXT, compress) for compress in [True, False] * 25))

    bodies = asyncio.run(main())
    assert pages.renders == 1 and fleet.builds == 1
    plain = bodies[1]
    assert all(gzip.decompress(b) == plain for b in bodies[::2]) and all(b == plain for b in bodies[1::2])
    assert plain == generate_latest(registry)


def test_a_change_after_a_render_shows_in_the_next_scrape(
    registry: CollectorRegistry, collector: SnapshotCollector, fleet: Fleet
) -> None:
    pages = _pages(registry, collector)

    async def main() -> tuple[bytes, bytes, bytes]:
        collector.update_lazy(fleet.build)
        first = await pages.page(TEXT_TYPE, TEXT, False)
        again = await pages.page(TEXT_TYPE, TEXT, False)
        fleet.value = 7
        collector.update_lazy(fleet.build)
        return first, again, await pages.page(TEXT_TYPE, TEXT, False)

    first, again, after = asyncio.run(main())
    assert first == again and b"} 1.0" in first
    assert b'assistants_runs{status="queued"} 7.0' in after
    assert pages.renders == 2 and fleet.builds == 2


def test_a_scrape_during_a_render_gets_a_page_with_the_changes_before_it(
    registry: CollectorRegistry, collector: SnapshotCollector, fleet: Fleet
) -> None:
    pages = _pages(registry, collector)

    async def main() -> tuple[bytes, bytes]:
        late: list[asyncio.Task[bytes]] = []

        def change_and_scrape() -> None:  # runs while the first render writes its page in a thread
            fleet.value = 2
            collector.update_lazy(fleet.build)
            late.append(asyncio.ensure_future(pages.page(TEXT_TYPE, TEXT, False)))

        loop = asyncio.get_running_loop()
        fleet.after_first_build = lambda: loop.call_soon(change_and_scrape)
        collector.update_lazy(fleet.build)
        early = await pages.page(TEXT_TYPE, TEXT, False)
        return early, await late[0]

    early, late = asyncio.run(main())
    assert b"} 1.0" in early and b'assistants_runs{status="queued"} 2.0' in late
    assert pages.renders == 2


def test_each_format_is_rendered_and_kept_apart(
    registry: CollectorRegistry, collector: SnapshotCollector, fleet: Fleet
) -> None:
    pages = _pages(registry, collector)

    async def main() -> tuple[bytes, bytes, bytes]:
        collector.update_lazy(fleet.build)
        om = await pages.page(OM_TYPE, OM, True)
        text = await pages.page(TEXT_TYPE, TEXT, False)
        return om, text, await pages.page(OM_TYPE, OM, False)

    om, text, om_plain = asyncio.run(main())
    assert gzip.decompress(om) == om_plain == om_latest(registry)
    assert text == generate_latest(registry)
    assert pages.renders == 2 and fleet.builds == 1  # one build serves both formats


def test_a_failed_render_fails_its_scrapes_and_the_next_scrape_retries(
    registry: CollectorRegistry, collector: SnapshotCollector, fleet: Fleet
) -> None:
    pages = _pages(registry, collector)

    async def main() -> bytes:
        fleet.fail = True
        collector.update_lazy(fleet.build)
        results = await asyncio.gather(*(pages.page(TEXT_TYPE, TEXT, False) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        fleet.fail = False
        return await pages.page(TEXT_TYPE, TEXT, False)

    assert b"} 1.0" in asyncio.run(main())


@pytest.fixture
def served(registry: CollectorRegistry, collector: SnapshotCollector, fleet: Fleet) -> Iterator[int]:
    with running(registry, Flags()) as srv:
        collector.add_listener(srv.server.metrics_changed)
        srv.loop.call_soon_threadsafe(collector.update_lazy, fleet.build)  # published on the loop, as the daemon does
        yield srv.port


def test_over_http_one_build_serves_every_format_and_filters_work(served: int, fleet: Fleet) -> None:
    status, headers, body = request(served, "GET", "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert b'assistants_runs{status="queued"} 1.0' in gzip.decompress(body)
    status, headers, body = request(served, "GET", "/metrics", {"Accept": "application/openmetrics-text"})
    assert headers["content-type"].startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    status, _, body = request(served, "GET", "/metrics?name[]=assistants_runs_finished_total")
    assert status == 200 and b"assistants_runs_finished_total" in body and b"assistants_runs{" not in body
    assert fleet.builds == 1 and threading.get_ident() not in fleet.threads


def test_over_http_a_failed_render_is_a_500(served: int, fleet: Fleet) -> None:
    fleet.fail = True
    status, _, body = request(served, "GET", "/metrics")
    assert status == 500 and body == b"rendering /metrics failed\n"


def test_a_snapshot_builds_the_state_it_was_taken_from_on_any_thread() -> None:
    """The daemon publishes a snapshot and the families are built later, off its loop: changes to the tracker
    after the snapshot must not show (nor race with the build)."""
    tracker = Tracker(["assistant_id"], 3600)
    tracker.observe_listing("t", [RunSnapshot("r1", "t", "queued", T0, assistant_id="a")], T0, complete=True, ok=True)
    state = ExporterState(api_up={"threads": 1.0})
    snap = snapshot(tracker, state, T0 + 5, ("threads",), ("threads",))
    expected = generate_latest(Families(build_families(tracker, state, T0 + 5, ("threads",), ("threads",))))
    tracker.observe_listing(
        "t",
        [
            RunSnapshot("r1", "t", "completed", T0, assistant_id="a", completed_at=T0 + 2),
            RunSnapshot("r2", "t", "failed", T0, assistant_id="b", failed_at=T0 + 3),
        ],
        T0 + 6,
        complete=True,
        ok=True,
    )
    state.api_up["threads"] = 0.0
    built: list[bytes] = []
    worker = threading.Thread(target=lambda: built.append(generate_latest(Families(families(snap)))))
    worker.start()
    worker.join()
    assert built == [expected]
    assert generate_latest(Families(build_families(tracker, state, T0 + 6, ("threads",), ("threads",)))) != expected


def test_a_prepared_update_copies_the_state_on_its_thread_only_when_a_scrape_asks(
    registry: CollectorRegistry, collector: SnapshotCollector, fleet: Fleet
) -> None:
    """The daemon's way: the copy of its state (prepare) runs on its loop, the build in the render thread."""
    pages = MetricsPages(registry, collector.prepare)
    collector.add_listener(pages.changed)
    prepared_on: list[int] = []

    def prepare() -> Callable[[], list[Metric]]:
        prepared_on.append(threading.get_ident())
        value = fleet.value  # the copy

        def build() -> list[Metric]:
            fleet.value = value
            return fleet.build()

        return build

    async def main() -> tuple[int, bytes, bytes]:
        for value in range(20):
            fleet.value = value
            collector.update_prepared(prepare)
        assert prepared_on == [] and fleet.builds == 0  # nobody asked
        first = await pages.page(TEXT_TYPE, TEXT, False)
        collector.update_prepared(prepare)  # published while nobody collects: stays pending
        return threading.get_ident(), first, await pages.page(TEXT_TYPE, TEXT, False)

    loop_thread, first, second = asyncio.run(main())
    assert b'assistants_runs{status="queued"} 19.0' in first and first == second
    assert prepared_on == [loop_thread, loop_thread] and fleet.builds == 2
    assert loop_thread not in fleet.threads


def test_a_build_prepared_before_a_newer_publish_is_still_built_by_another_thread(
    collector: SnapshotCollector, fleet: Fleet
) -> None:
    """The loop prepares, publishes again before the render thread collects: that thread must build the
    prepared state (it cannot prepare the new one), not serve what was built before."""
    collector.update_prepared(lambda: fleet.build)
    collector.prepare()
    fleet.value = 5
    collector.update_prepared(lambda: fleet.build)
    collected: list[list[Metric]] = []
    worker = threading.Thread(target=lambda: collected.append(list(collector.collect())))
    worker.start()
    worker.join()
    assert collected[0][0].samples[0].value == 5 and fleet.builds == 1
    assert next(iter(collector.collect())).samples[0].value == 5 and fleet.builds == 2  # the loop: the newer one
