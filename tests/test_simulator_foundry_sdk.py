"""The official azure-ai-agents SDK, with an azure-identity credential, lists threads and runs from the simulator.

The SDK's pager follows `last_id` and ignores `has_more`: it ends only because the simulator nulls `last_id`
on the last page. Its bearer-token policy refuses plain http unless each call passes `enforce_https=False`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from azure.ai.agents import AgentsClient
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.identity import DefaultAzureCredential

from exporter.simulator import FakeClock, Simulator

HTTP = {"enforce_https": False}  # loopback http: the simulator is not behind TLS


@dataclass
class World:
    sim: Simulator
    client: AgentsClient
    threads: list[str]  # every thread, oldest first (created_at, then id)
    thread_id: str  # a thread with many runs
    runs: list[str]  # its runs, oldest first


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    clock = FakeClock(start=1_760_000_000.0)
    with (
        Simulator(scenario="steady", seed=21, clock=clock, flavor="foundry") as sim,
        pytest.MonkeyPatch.context() as mp,
    ):
        sim.engine.set_workload(False)
        for i in range(240):  # three threads share each created_at second, so ties are broken by id
            sim.engine.create_thread()
            if i % 3 == 2:
                clock.advance(1)
        tid = sim.engine.create_thread()
        for i in range(250):
            sim.engine.create_run(tid, [("queued", 1), ("in_progress", 2), ("completed", 0)])
            if i % 2:
                clock.advance(1)
        clock.advance(10)  # every run has completed
        listed = sim.engine.list_threads(limit=100_000, order="asc", after=None, before=None)[0]
        runs = [r for r in sim.engine.runs() if r["thread_id"] == tid]
        for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "IDENTITY_SERVER_THUMBPRINT"):
            mp.delenv(name, raising=False)
        mp.setenv("IDENTITY_ENDPOINT", sim.identity_endpoint)
        mp.setenv("IDENTITY_HEADER", sim.identity_header)
        mp.setenv("AZURE_TOKEN_CREDENTIALS", "ManagedIdentityCredential")
        credential = DefaultAzureCredential()
        with AgentsClient(endpoint=sim.base_url, credential=credential) as client:
            yield World(
                sim=sim,
                client=client,
                threads=[t["id"] for t in listed],
                thread_id=tid,
                runs=[r["id"] for r in sorted(runs, key=lambda r: (r["created_at"], r["id"]))],
            )
        credential.close()


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("limit", [None, 100, 7])
def test_the_sdk_pager_lists_every_thread(world: World, order: str, limit: int | None) -> None:
    listed = [t.id for t in world.client.threads.list(order=order, limit=limit, **HTTP)]
    assert len(listed) == len(world.threads) == 247  # 240, the runs' thread and the scenario's 6
    assert listed == (world.threads if order == "asc" else world.threads[::-1])


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("limit", [None, 100])
def test_the_sdk_pager_lists_every_run_of_a_thread(world: World, order: str, limit: int | None) -> None:
    listed = list(world.client.runs.list(world.thread_id, order=order, limit=limit, **HTTP))
    assert [r.id for r in listed] == (world.runs if order == "asc" else world.runs[::-1])
    assert len(listed) == 250
    assert {r.status for r in listed} == {"completed"}
    assert all(r.thread_id == world.thread_id for r in listed)


def test_the_sdk_reads_one_thread_and_one_run(world: World) -> None:
    thread = world.client.threads.get(world.thread_id, **HTTP)
    assert thread.id == world.thread_id
    run = world.client.runs.get(world.thread_id, world.runs[0], **HTTP)
    assert run.id == world.runs[0] and run.status == "completed"
    assert run.usage is not None and run.usage.total_tokens == 150


def test_one_token_served_every_call(world: World) -> None:
    list(world.client.threads.list(limit=100, **HTTP))
    assert world.sim.tokens.issued == 1  # azure-identity cached it; the simulator accepted it each time


def test_a_credential_for_another_identity_endpoint_is_refused(world: World) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IDENTITY_HEADER", "not-the-simulators")
        credential = DefaultAzureCredential()
        with (
            AgentsClient(endpoint=world.sim.base_url, credential=credential) as client,
            pytest.raises(ClientAuthenticationError),
        ):
            list(client.threads.list(**HTTP))
        credential.close()


def test_without_enforce_https_false_the_sdk_refuses_plain_http(world: World) -> None:
    with pytest.raises(ServiceRequestError, match="https"):
        list(world.client.threads.list(retry_total=0))  # a refusal, not worth the retry policy's backoff
