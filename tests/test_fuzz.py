"""Fuzz tests of every parser that reads the network or a file, with generated JSON and raw bytes.

Parsers: run pages (`exporter.sources.assistants.parse_page`), single runs (`exporter.model.parse_run`), Agents
API turn pages and turns (`exporter.sources.listing.parse_list` with `exporter.model.parse_turn`), Responses
(`exporter.model.parse_response`), the discovery pages of threads and sessions
(`exporter.sources.foundry.parse_threads_page`) and of responses (`exporter.sources.responses.parse_responses_page`),
push bodies (`exporter.sources.push.split_body` and `parse_items`),
webhook deliveries (`exporter.sources.webhooks.verify` and `parse_event`), the threads file
(`exporter.config.parse_threads` / `read_threads_file`) and the YAML config (`load_config` with `--config`).
Each must never raise (a ConfigError is the expected answer to bad configuration), and every item it rejects
must be counted: each item of a page or a push body is either a snapshot or in `invalid`.

CI runs a short budget: FUZZ_EXAMPLES unset means 100 examples per test, the whole file in about 6 s on an
idle machine. FUZZ_EXAMPLES sets the examples per test; tests/fuzz_long.sh runs 1,000,000 inputs across the
fuzz tests (niced), logging to /tmp/fuzz_long.log. Every strategy includes hostile strings (lone surrogates,
values of 200 KB) and the page and push bodies include 100,000-deep nesting.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import statuses
from exporter.config import YAML_KEYS, Config, ConfigError, load_config, parse_threads, read_threads_file
from exporter.model import (
    INVALID_REASONS,
    REASON_BAD_STRING,
    REASON_MISSING_ID,
    REASON_MISSING_STATUS,
    REASON_NOT_OBJECT,
    REASON_TOO_LONG,
    REASON_UNKNOWN_STATUS,
    REASON_WRONG_TYPE,
    TURN_STATUSES,
    parse_run,
    parse_turn,
    snapshot_problem,
    string_problem,
    thread_id_problem,
)
from exporter.sources.assistants import parse_page
from exporter.sources.foundry import discover_threads, parse_threads_page, read_thread
from exporter.sources.listing import ListPage, ReadItem, parse_list, read_runs
from exporter.sources.responses import parse_responses_page, read_response_item

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
settings.register_profile(
    "fuzz",
    max_examples=EXAMPLES,
    deadline=None,  # a shared CI machine has pauses; speed is measured in bench/, not here
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("fuzz")

# Reasons for which the item is dropped, and those for which it is kept (with status `unknown`).
DROPPED = (REASON_NOT_OBJECT, REASON_MISSING_ID, REASON_WRONG_TYPE, REASON_BAD_STRING, REASON_TOO_LONG)
KEPT = (REASON_MISSING_STATUS, REASON_UNKNOWN_STATUS)
THREAD = "thread_fuzz"

RUN_FIELDS = (
    "id", "object", "thread_id", "assistant_id", "model", "status", "created_at", "started_at", "expires_at",
    "cancelled_at", "failed_at", "completed_at", "last_error", "incomplete_details", "usage",
)
TIMES = ("created_at", "started_at", "expires_at", "cancelled_at", "failed_at", "completed_at")

# ------------------------------------------------------------------------------------------ strategies

# Hostile strings: lone surrogates (JSON "\ud800"), values far over the 256-character bound, and both.
hostile_strings = st.one_of(
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.tuples(st.text(max_size=6), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
              st.text(max_size=6)).map("".join),
    st.sampled_from(["x" * 257, "y" * 200_000, "\ud800" * 300, "ok\udfff", "\ufffd", "\U0010ffff"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**53 + 1, 2**63, -1, 0]),  # beyond a float, at the edges
    st.floats(allow_nan=True, allow_infinity=True),  # json.loads accepts NaN / Infinity
    st.text(max_size=12),
    hostile_strings,
)
# Small nested values: generation dominates the cost of an example, and the parsers only look one or two
# levels deep.
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=8), children, max_size=3),
    ),
    max_leaves=6,
)
plausible = {
    "id": st.one_of(st.text(min_size=1, max_size=30), json_values, st.just("x" * 257), hostile_strings),
    "status": st.one_of(st.sampled_from([*statuses.API_STATUSES, *statuses.ENUM_NAMES]), json_values),
    "usage": st.one_of(
        st.fixed_dictionaries({}, optional={"prompt_tokens": json_values, "completion_tokens": json_values}),
        json_values,
    ),
    "last_error": st.one_of(st.fixed_dictionaries({"code": json_values}), json_values),
    "incomplete_details": st.one_of(st.fixed_dictionaries({"reason": json_values}), json_values),
    **{key: st.one_of(st.integers(0, 2**40), json_values) for key in TIMES},
}
# Run-shaped objects: the right keys with values of the right or a wrong type, so parsing gets past the
# first check as often as it fails it.
run_objects = st.fixed_dictionaries(
    {}, optional={key: plausible.get(key, json_values) for key in RUN_FIELDS}
)
items = st.one_of(run_objects, json_values)


def envelopes(item_strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """List pages of these items, with every envelope field right, wrong or missing."""
    return st.fixed_dictionaries(
        {"data": st.one_of(st.lists(item_strategy, max_size=8), json_values)},
        optional={
            "object": st.just("list"),
            "has_more": st.one_of(st.booleans(), json_values),
            "first_id": json_values,
            "last_id": st.one_of(st.text(max_size=10), hostile_strings, json_values),
        },
    )


pages = envelopes(items)


def encode(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8")


def mutations(body: bytes) -> st.SearchStrategy[bytes]:
    """The body truncated, or with one byte replaced: what a network or a bug does to a page."""
    if not body:
        return st.just(body)
    cut = st.integers(0, len(body) - 1).map(lambda n: body[:n])
    flip = st.tuples(st.integers(0, len(body) - 1), st.integers(0, 255)).map(
        lambda p: body[: p[0]] + bytes([p[1]]) + body[p[0] + 1 :]
    )
    return st.one_of(cut, flip)


HOSTILE_BODIES = [
    b'{"data": [', b"[" * 100_000, b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    *(b'{"data": [{"id": "x", "created_at": 1, "deep": ' + b"[" * n + b"]" * n + b"}, 7]}" for n in (500, 5_000)),
    b'{"data": [{"id": "r\\ud800", "created_at": 1, "status": "completed"}]}',
    b'{"data": [{"id": "r", "created_at": 1e999}]}', b'{"data": [{"id": "r", "created_at": -1e999}]}',
    b'{"data": [{"id": "r", "created_at": NaN}]}', b'{"data": [{"id": "r", "created_at": ' + b"9" * 5000 + b"}]}",
    b'{"data": [], "has_more": true, "last_id": "\\udfff"}', b"\xef\xbb\xbf{}",
]


def list_bodies(item_strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Bodies of a list endpoint: pages of these items as sent, damaged in transit, other JSON, other bytes."""
    pages = envelopes(item_strategy)
    return st.one_of(
        pages.map(encode),
        pages.map(encode).flatmap(mutations),
        json_values.map(encode),
        st.binary(max_size=200),
        st.sampled_from(HOSTILE_BODIES),
    )


page_bodies = list_bodies(items)

# ------------------------------------------------------------------------------------------ checks


def check_accounting(data: list[Any], runs: int, invalid: dict[str, int]) -> None:
    """Every item is a snapshot or counted as dropped; kept-but-downgraded items are counted too."""
    assert set(invalid) <= set(INVALID_REASONS)
    assert all(count > 0 for count in invalid.values())
    assert runs + sum(invalid.get(r, 0) for r in DROPPED) == len(data)
    assert sum(invalid.get(r, 0) for r in KEPT) <= runs


def check_envelope(body: bytes, page: ListPage[Any]) -> None:
    """Every item accounted for; a next page only after a cursor a query string can carry, and only when the
    page did not say the list ended."""
    envelope = json.loads(body)  # the parser accepted it, so this is a JSON object with a list
    check_accounting(envelope["data"], len(page.items), page.invalid)
    if page.cursor is not None:
        assert page.cursor and string_problem(page.cursor) is None  # it goes into a query string
        assert envelope.get("has_more") is not False
    elif envelope.get("has_more") is True:
        pytest.fail("more pages without a cursor must be malformed")


def check_snapshot_types(obj: Any) -> None:
    result = parse_run(obj, THREAD)
    if result.snapshot is None:
        assert result.invalid_reason in DROPPED
        return
    snap = result.snapshot
    assert snap.id and isinstance(snap.id, str) and snap.scope
    assert snapshot_problem(snap) is None  # nothing downstream meets a string the store cannot write
    assert snap.status in statuses.ALL_STATUSES
    for key in TIMES:
        value = getattr(snap, key)
        assert value is None or (type(value) is int)
    assert result.invalid_reason in (None, *KEPT)
    assert (result.invalid_reason is None) == statuses.is_recognized(obj.get("status"))


# ------------------------------------------------------------------------------------------ pages and runs


@FUZZ
@given(page_bodies)
def test_parse_page_never_raises_and_counts_every_item(body: bytes) -> None:
    page = parse_page(body, THREAD)
    if page is None:
        return  # the caller counts it as malformed_page and retries
    check_envelope(body, page)
    assert all(run.scope for run in page.items)


@FUZZ
@given(items)
def test_parse_run_never_raises(obj: Any) -> None:
    check_snapshot_types(obj)


@FUZZ
@given(items)
def test_parse_run_survives_the_wire(obj: Any) -> None:
    # Through JSON and back: NaN, Infinity and 400-digit integers as the network delivers them.
    check_snapshot_types(json.loads(encode(obj)))


# ------------------------------------------------------------------------------------------ turns

TURN_FIELDS = ("id", "object", "agent_id", "session_id", "status", "created_at", "started_at", "completed_at",
               "error", "usage")
TURN_TIMES = ("created_at", "started_at", "completed_at")
SESSION = "sess_fuzz"
turn_plausible = {
    "id": plausible["id"],
    "status": st.one_of(st.sampled_from([*TURN_STATUSES, "requires_action", "paused"]), json_values),
    "usage": st.one_of(
        st.fixed_dictionaries({}, optional={"input_tokens": json_values, "output_tokens": json_values}),
        json_values,
    ),
    "error": st.one_of(st.fixed_dictionaries({"code": json_values}), json_values),
    **{key: st.one_of(st.integers(0, 2**40), json_values) for key in TURN_TIMES},
}
turn_items = st.one_of(
    st.fixed_dictionaries({}, optional={key: turn_plausible.get(key, json_values) for key in TURN_FIELDS}),
    json_values,
)
turn_page_bodies = st.one_of(
    st.fixed_dictionaries({"data": st.lists(turn_items, max_size=8)},
                          optional={"has_more": st.one_of(st.booleans(), json_values),
                                    "last_id": json_values}).map(encode).flatmap(
        lambda body: st.one_of(st.just(body), mutations(body))),
    st.binary(max_size=200),
)


def check_turn(obj: Any) -> None:
    result = parse_turn(obj, SESSION)
    if result.snapshot is None:
        assert result.invalid_reason in DROPPED
        return
    snap = result.snapshot
    assert snap.id and isinstance(snap.id, str) and snap.scope and snap.source == "sessions"
    assert snapshot_problem(snap) is None
    assert snap.status in statuses.ALL_STATUSES
    assert all(getattr(snap, key) is None or type(getattr(snap, key)) is int for key in TIMES)
    recognized = isinstance(obj.get("status"), str) and obj["status"] in TURN_STATUSES
    assert (result.invalid_reason is None) == recognized
    if snap.terminal:  # completed_at ends every terminal turn
        assert snap.ended_at() == (None if obj.get("completed_at") is None else int(obj["completed_at"]))


@FUZZ
@given(turn_items)
def test_parse_turn_survives_the_wire(obj: Any) -> None:
    check_turn(json.loads(encode(obj)))


@FUZZ
@given(turn_page_bodies)
def test_turn_pages_never_raise_and_count_every_item(body: bytes) -> None:
    page = parse_list(body, read_runs(parse_turn, SESSION))
    if page is None:
        return
    check_envelope(body, page)


# ------------------------------------------------------------------------------------------ threads file

thread_lines = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12),
    st.text(max_size=12),
    st.just("# comment"),
    st.just(""),
)
threads_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(thread_lines.map(lambda s: s.encode("utf-8")), st.binary(max_size=12)), max_size=20).map(
        b"\n".join
    ),
    st.tuples(st.sampled_from([b"", b"\xef\xbb\xbf"]), st.lists(thread_lines, max_size=10)).map(
        lambda p: p[0] + "\r\n".join(p[1]).encode("utf-8")
    ),
)


def check_threads(parsed_ids: tuple[str, ...], invalid: tuple[tuple[int, str], ...], lines: int) -> None:
    assert len(set(parsed_ids)) == len(parsed_ids)
    assert all(thread_id_problem(i) is None and not i.startswith("\ufeff") for i in parsed_ids)
    numbers = [n for n, _ in invalid]
    assert numbers == sorted(set(numbers)) and all(1 <= n <= lines for n in numbers)
    assert len(parsed_ids) + len(invalid) <= lines


@FUZZ
@given(threads_bytes)
def test_threads_bytes_never_raise(data: bytes) -> None:
    parsed = parse_threads(data)
    check_threads(parsed.ids, parsed.invalid, len(data.splitlines()))


@FUZZ
@given(st.text(max_size=300))
def test_threads_text_never_raises(text: str) -> None:
    parsed = parse_threads(text)
    check_threads(parsed.ids, parsed.invalid, len(text.splitlines()))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=threads_bytes)
def test_threads_file_never_raises(workdir: Path, data: bytes) -> None:
    path = workdir / "threads.txt"
    path.write_bytes(data)
    parsed = read_threads_file(path)
    assert parsed == parse_threads(data)


# ------------------------------------------------------------------------------------------ YAML config

yaml_values = st.one_of(
    json_values,
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    st.dates(),
    st.sampled_from(["5", "0.1", "-1", "1e999", "nan", "bearer", "api-key", "debug", "json", "127.0.0.1:0",
                     "[::1]:9788", "http://127.0.0.1:1/v1", "a,b", "", "true"]),
)
yaml_documents = st.one_of(
    st.fixed_dictionaries({}, optional={key: yaml_values for key in YAML_KEYS}),
    st.dictionaries(st.one_of(st.sampled_from(sorted(YAML_KEYS)), st.text(max_size=10)), yaml_values, max_size=6),
)


def _safe_yaml(doc: Any) -> bytes:
    try:
        return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8")
    except (yaml.YAMLError, UnicodeEncodeError):
        return b"{}"  # a value PyYAML itself cannot write (e.g. a lone surrogate)


config_bodies = st.one_of(
    yaml_documents.map(_safe_yaml),
    yaml_documents.map(_safe_yaml).flatmap(mutations),
    st.binary(max_size=200),
    st.sampled_from([b"", b"\xef\xbb\xbfpoll_interval: 1\n", b"- a\n- b\n", b"&a [*a]", b"!!python/object:os.system {}",
                     b"a: &x [*x]\n", b"poll_interval: .inf\n", b"threads: {a: 1}\n", b"\x00"]),
)


@pytest.fixture(scope="module")
def config_env(workdir: Path) -> Iterator[dict[str, str]]:
    key = workdir / "key"
    key.write_text("sk-fuzz-0123456789", encoding="utf-8")
    threads = workdir / "threads-for-config.txt"
    threads.write_text("thread_a\n", encoding="utf-8")
    # Paths come from flags, which win over the YAML file: the fuzzer must not create directories anywhere.
    yield {"state": str(workdir / "state" / "s.db"), "key": str(key), "threads": str(threads)}


@FUZZ
@given(body=config_bodies)
def test_load_config_yaml_never_raises(workdir: Path, config_env: dict[str, str], body: bytes) -> None:
    path = workdir / "config.yaml"
    path.write_bytes(body)
    argv = ["--config", str(path), "--state-file", config_env["state"], "--api-key-file", config_env["key"],
            "--threads-file", config_env["threads"]]
    try:
        config = load_config(argv, {"HOME": str(workdir)})
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and message  # one line, not empty
        assert "sk-fuzz" not in message
        return
    assert isinstance(config, Config)
    assert math.isfinite(config.poll_interval) and config.poll_interval >= 0.1
    assert config.idle_poll_interval >= config.poll_interval
    assert 1 <= config.max_concurrency <= 256


# ------------------------------------------------------------------------------ receivers: push and webhooks

response_objects = st.fixed_dictionaries(
    {"object": st.one_of(st.just("response"), json_values)},
    optional={"id": plausible["id"], "status": plausible["status"], "created_at": json_values,
              "completed_at": json_values, "model": json_values,
              "error": st.one_of(st.fixed_dictionaries({"code": json_values}), json_values),
              "incomplete_details": plausible["incomplete_details"],
              "usage": st.one_of(st.fixed_dictionaries({}, optional={"input_tokens": json_values,
                                                                     "output_tokens": json_values}), json_values)},
)
push_items = st.one_of(
    run_objects, response_objects, json_values,
    st.fixed_dictionaries({"event": st.one_of(st.sampled_from(["thread.run.completed", "thread.run.step.created",
                                                                "thread.message.created"]), json_values),
                           "data": st.one_of(run_objects, json_values)}),
    st.fixed_dictionaries({"id": plausible["id"], "status": st.one_of(st.integers(-2, 12), plausible["status"])}),
)
push_bodies = st.one_of(
    st.lists(push_items, max_size=6).map(encode).flatmap(lambda b: st.one_of(st.just(b), mutations(b))),
    push_items.map(encode),
    st.binary(max_size=200),
)


@FUZZ
@given(push_bodies, st.booleans())
def test_push_bodies_never_raise_and_every_item_is_a_run_or_invalid(body: bytes, ndjson: bool) -> None:
    from exporter.sources.push import parse_items, split_body

    if ndjson:
        body = body.replace(b"[", b"").replace(b"]", b"").replace(b"},", b"}\n")
    items = split_body(body, ndjson)
    if items is None:
        return  # answered 400: not JSON
    parsed = parse_items(items, 1_800_000_000.0)
    assert len(parsed.runs) + len(parsed.invalid) == len(items)
    assert sorted(i for i, _ in parsed.invalid) == [i for i, _ in parsed.invalid]
    for run in parsed.runs:
        assert snapshot_problem(run) is None
        assert run.source == "push" and run.status in statuses.ALL_STATUSES and isinstance(run.created_at, int)


@FUZZ
@given(st.one_of(response_objects, json_values))
def test_parse_response_survives_the_wire(obj: Any) -> None:
    from exporter.model import parse_response

    try:
        wire = json.loads(encode(obj))
    except ValueError:
        return
    parsed = parse_response(wire, "responses")
    assert parsed.snapshot is not None or parsed.invalid_reason in DROPPED
    if parsed.snapshot is not None:
        assert parsed.snapshot.scope == "" and isinstance(parsed.snapshot.created_at, int)


webhook_events = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["response.completed", "response.failed", "response.cancelled",
                                        "response.incomplete", "response.created"]), json_values)},
    optional={"id": json_values, "created_at": st.one_of(st.integers(-5, 2**54), json_values),
              "data": st.one_of(st.fixed_dictionaries({"id": plausible["id"]}), json_values)},
)


@FUZZ
@given(st.one_of(webhook_events.map(encode).flatmap(lambda b: st.one_of(st.just(b), mutations(b))),
                 st.binary(max_size=200)),
       st.dictionaries(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"]),
                       st.text(max_size=40), max_size=3))
def test_webhook_bodies_and_headers_never_raise(body: bytes, headers: dict[str, str]) -> None:
    from exporter.sources.webhooks import parse_event, sign, verify

    key = b"fuzz-secret-0123456789"
    refused = verify([key], headers, body, 1_800_000_000.0)
    assert refused is None or isinstance(refused, str)
    # A correctly signed delivery of the same body is accepted, and then parsed without raising.
    signed = {"webhook-id": "msg_1", "webhook-timestamp": "1800000000",
              "webhook-signature": "v1," + sign(key, "msg_1", 1_800_000_000, body)}
    assert verify([key], signed, body, 1_800_000_000.0) is None
    event = parse_event(body)
    if event is not None and event[1] is not None:
        assert event[1].terminal and event[1].source == "webhooks"


# ------------------------------------------------------------------------------------------ discovery pages

thread_objects = st.fixed_dictionaries(
    {}, optional={"id": plausible["id"], "object": st.just("thread"),
                  "created_at": st.one_of(st.integers(0, 2**40), json_values,
                                          st.sampled_from([math.nan, math.inf, -math.inf, 10**400, 2**53 + 1]))},
)


def check_scopes(body: bytes, read: ReadItem[Any], page: ListPage[Any] | None) -> None:
    """A discovery page: every item a usable scope or counted as dropped, and the envelope's rules."""
    if page is None:
        return  # the pass counts it as malformed_page and stops unfinished
    check_envelope(body, page)
    for raw in json.loads(body)["data"]:
        read(raw)  # the page would count a reader's exception as wrong_type: it must not raise at all
    assert not set(page.invalid) & set(KEPT)  # a scope is found or not: nothing is kept and counted
    for found in page.items:
        assert thread_id_problem(found.id) is None  # it goes into a URL path
        assert type(found.created_at) is int and abs(found.created_at) <= 2**53


@FUZZ
@given(list_bodies(st.one_of(thread_objects, json_values)))
def test_threads_pages_never_raise_and_count_every_item(body: bytes) -> None:
    check_scopes(body, read_thread, parse_threads_page(body))


@FUZZ
@given(list_bodies(st.one_of(response_objects, json_values)))
def test_responses_pages_never_raise_and_count_every_item(body: bytes) -> None:
    check_scopes(body, read_response_item, parse_responses_page(body))


@FUZZ
@given(st.lists(list_bodies(st.one_of(thread_objects, response_objects)), min_size=1, max_size=4),
       st.sampled_from(["threads", "responses"]))
def test_discovery_passes_never_raise(bodies: list[bytes], kind: str) -> None:
    served = iter(bodies)

    async def fetch(params: dict[str, str]) -> bytes | None:
        return next(served, None)

    reader = read_thread if kind == "threads" else read_response_item
    got = asyncio.run(discover_threads(fetch, lambda _: False, 0.0, read_item=reader))
    assert 1 <= got.requests <= len(bodies) + 1
    assert set(got.invalid) <= set(INVALID_REASONS) and all(n > 0 for n in got.invalid.values())
    assert got.finished == (got.stopped in ("since", "known", "end"))
    assert (got.invalid.get("malformed_page", 0) == 1) == (got.stopped in ("malformed", "loop"))
    assert len({t.id for t in got.threads}) == len(got.threads)


@FUZZ
@given(st.one_of(thread_objects, response_objects, json_values))
def test_discovery_items_survive_the_wire(obj: Any) -> None:
    # The item readers on their own: the page parser would count a reader's exception as wrong_type.
    wire = json.loads(encode(obj))
    for read in (read_thread, read_response_item):
        found, reason = read(wire)
        assert (found is None) != (reason is None)
        assert reason is None or reason in DROPPED
