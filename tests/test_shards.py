"""Sharding: a stable owner per scope, and three replicas that together report exactly what one does."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import sqlite3
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from exporter.inbox import Inbox
from exporter.shards import Sharding, ordinal, run_key
from exporter.simulator import Simulator
from exporter.sources.push import PushReceiver, PushTokens
from tests.conftest import SimFactory
from tests.exporter_process import ExporterProcess, Samples, by_label, total
from tests.helpers import free_port, wait_until
from tests.simulator_support import quiesce

TOKEN = "shard-test-token-0123456789"


def test_the_owner_is_stable_spread_and_the_same_in_every_process() -> None:
    sharding = Sharding(0, 3)
    owners = [sharding.owner(f"thread_{i}") for i in range(3000)]
    assert all(600 < owners.count(s) < 1400 for s in range(3))
    # Fixed values: a change of the hash would move every scope to another replica on upgrade.
    assert [sharding.owner(k) for k in ("thread_a", "thread_b", "run_1", "")] == [
        Sharding(1, 3).owner("thread_a"), Sharding(2, 3).owner("thread_b"), Sharding(0, 3).owner("run_1"),
        Sharding(0, 3).owner("")]
    assert Sharding(0, 3).owner("thread_abc") == int.from_bytes(
        __import__("hashlib").sha256(b"thread_abc").digest()[:8], "big") % 3
    assert Sharding(0, 1).owns("anything")
    assert run_key("thread_a", "run_1") == "thread_a" and run_key("", "resp_1") == "resp_1"


@pytest.mark.parametrize(("hostname", "number"), [("assistants-exporter-3", 3), ("web-0.svc.cluster", 0),
                                                  ("exporter", None), ("name-x", None)])
def test_shard_auto_takes_the_statefulset_ordinal(hostname: str, number: int | None) -> None:
    assert ordinal(hostname) == number


def _ports(n: int) -> tuple[str, list[int]]:
    """n free consecutive ports ending in 0..n-1, and a --shard-peer-url template for them."""
    for _ in range(200):
        prefix = random.randint(2000, 6400)
        ports = [prefix * 10 + i for i in range(n)]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return f"http://127.0.0.1:{prefix}{{shard}}", ports
    raise AssertionError("no free ports")


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(scenario="steady", seed=5, speed=40)




def _exporter(sim: Simulator, tmp_path: Path, name: str, extra: list[str], port: int | None = None) -> ExporterProcess:
    threads = tmp_path / "threads.txt"
    args = ["--api-base", sim.base_url, "--threads-file", str(threads), "--state-file", str(tmp_path / f"{name}.db"),
            "--source", "threads", "--source", "push", "--poll-interval", "0.2", "--idle-poll-interval", "0.5",
            "--max-requests-per-second", "500", *extra]
    process = ExporterProcess(args, {"OPENAI_API_KEY": "sk-test", "ASSISTANTS_EXPORTER_PUSH_TOKEN": TOKEN},
                              tmp_path / f"{name}.log")
    if port is not None:
        process.port = port
        process.args[-1] = f"127.0.0.1:{port}"
    return process.start()


def _swept(state_file: Path) -> set[str]:
    """The threads the exporter has read once (its first successful listing), from its state file."""
    if not state_file.exists():
        return set()
    db = sqlite3.connect(f"file:{state_file}?mode=ro", uri=True, timeout=5)
    try:
        return {row[0] for row in db.execute("SELECT id FROM scopes WHERE swept = 1")}
    except sqlite3.OperationalError:  # not created yet
        return set()
    finally:
        db.close()


def _sum(samples: list[Samples]) -> Samples:
    out: Samples = {}
    for s in samples:
        for key, value in s.items():
            out[key] = out.get(key, 0.0) + value
    return out


COMPARED = ("assistants_runs", "assistants_runs_finished_total", "assistants_run_errors_total",
            "assistants_run_incomplete_total", "assistants_run_tokens_total", "assistants_run_duration_seconds_count",
            "assistants_run_status_duration_seconds_count", "assistants_exporter_push_items_total",
            "assistants_exporter_threads")


def _view(samples: Samples) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every run counter and gauge. Of the stint histogram only queued stints: the API's timestamps give them
    exactly, while a later stint is seen only if a poll falls inside it, which differs between processes."""
    return {k: v for k, v in samples.items() if k[0] in COMPARED and v
            and (k[0] != "assistants_run_status_duration_seconds_count" or ("status", "queued") in k[1])}


@pytest.mark.slow
def test_three_shards_report_together_what_one_exporter_reports(sim: Simulator, tmp_path: Path) -> None:
    quiesce(sim)
    threads = sim.thread_ids()
    (tmp_path / "threads.txt").write_text("\n".join(threads) + "\n")
    template, ports = _ports(3)
    single = _exporter(sim, tmp_path, "single", [])
    shards = [_exporter(sim, tmp_path, f"shard{i}", ["--shard", str(i), "--total-shards", "3",
                                                     "--shard-peer-url", template], ports[i]) for i in range(3)]
    everyone = [single, *shards]
    try:
        for e in everyone:
            e.wait_ready()
        want = sum(sim.engine.truth().by_status.values())
        wait_until(lambda: all(total(s.scrape(), "assistants_runs") == want for s in [single])
                   and sum(total(s.scrape(), "assistants_runs") for s in shards) == want, 30, 0.2, "sweeps")
        # Every thread read once by each side before runs start: a run that a late first listing finds already
        # finished is history for that side only (the readiness probe waits for one poll, not all of them).
        owned = [{t for t in threads if Sharding(i, 3).owns(t)} for i in range(3)]
        wait_until(lambda: _swept(tmp_path / "single.db") >= set(threads)
                   and all(_swept(tmp_path / f"shard{i}.db") >= owned[i] for i in range(3)), 30, 0.2,
                   "every thread swept")
        sim.engine.set_workload(True)
        rng = random.Random(3)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(timeout=20) as client:
            for batch in range(12):  # pushed runs: some of simulator threads, some with no thread
                items = []
                for i in range(10):
                    run_id = f"pushed_{batch}_{i}"
                    thread = rng.choice([*threads, ""])
                    final = rng.choice(["Completed", "Failed", 8, "Incomplete"])
                    items += [{"id": run_id, "status": "Queued", "thread_id": thread or None, "created_at": 1},
                              {"id": run_id, "status": final, "thread_id": thread or None, "created_at": 1,
                               "last_error": {"code": "server_error"}}]
                items = [{k: v for k, v in item.items() if v is not None} for item in items]
                rng.shuffle(items)
                for target in (single, rng.choice(shards)):
                    answer = client.post(target.url + "/api/v1/runs", json=items, headers=auth)
                    assert answer.status_code == 200, answer.text
                    body = answer.json()
                    assert body["accepted"] + body["duplicates"] + body["stale"] == 20 and not body["invalid"]
            registered = client.put(rng.choice(shards).url + f"/api/v1/threads/{threads[0]}", headers=auth)
            assert registered.status_code == 200 and registered.json()["result"] == "exists"
        wait_until(lambda: sum(sim.engine.truth().finished.values()) >= want + 40, 90, 0.2, "workload")
        sim.engine.set_workload(False)
        quiesce(sim)

        def same() -> bool:
            return _view(single.scrape()) == _view(_sum([s.scrape() for s in shards]))
        wait_until(same, 60, 0.5, lambda: f"single {_view(single.scrape())} != shards "
                                          f"{_view(_sum([s.scrape() for s in shards]))}")
        # Each thread is polled by exactly the shard that owns it.
        for number, shard in enumerate(shards):
            owned = sum(1 for t in threads if Sharding(number, 3).owns(t))
            samples = shard.scrape()
            assert total(samples, "assistants_exporter_threads") == owned
            assert total(samples, "assistants_exporter_shard", shard=str(number), total_shards="3") == 1
        assert by_label(single.scrape(), "assistants_exporter_shard", "total_shards") == {"1": 1.0}
    finally:
        for e in everyone:
            e.stop()


def test_failed_forwards_log_one_warning_per_shard_a_minute_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    """Regression (issue 16): every failed forward to a shard that is down logged its own warning."""
    now = [0.0]
    sharding = Sharding(0, 2, f"http://127.0.0.1:{free_port()}/{{shard}}")  # nothing listens there
    receiver = PushReceiver(Inbox(), PushTokens([TOKEN]), max_body=1 << 16, clock=lambda: 1.8e9,
                            on_request=lambda code: None, sharding=sharding, mono=lambda: now[0])
    remote = next(f"run_{i}" for i in range(100) if sharding.owner(f"run_{i}") == 1)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def push(times: int) -> list[int]:
        transport = httpx.ASGITransport(app=Starlette(routes=receiver.routes()))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            codes = [(await client.post("/api/v1/runs", json=[{"id": remote, "status": "queued"}],
                                        headers=headers)).status_code for _ in range(times)]
        await receiver.aclose()
        receiver._peers = None
        return codes

    with caplog.at_level(logging.WARNING, logger="exporter.sources.push"):
        assert asyncio.run(push(20)) == [502] * 20
        assert len(caplog.records) == 1 and "shard 1" in caplog.text
        now[0] += 61
        assert asyncio.run(push(1)) == [502]
    assert len(caplog.records) == 2 and "19 more failures" in caplog.records[1].getMessage()
