"""`assistants-exporter simulate`: serve the simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from exporter.config import parse_listen
from exporter.simulator.faults import Faults
from exporter.simulator.responses import ResponseWorkload
from exporter.simulator.scenarios import SCENARIOS
from exporter.simulator.server import FLAVORS, Simulator
from exporter.simulator.sessions import SESSION_SCENARIOS
from exporter.simulator.webhooks import Announcers, WebhookFaults, WebhookSender

PROG = "assistants-exporter simulate"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line and exit 2 (argparse would print the whole usage first).
        raise _UsageError(message)


def _listen(value: str) -> tuple[str, int]:
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, got {value!r}") from None


def _positive(value: str) -> float:
    number = _number(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value!r}")
    return number


def _non_negative(value: str) -> float:
    number = _number(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value!r}")
    return number


def _probability(value: str) -> float:
    number = _number(value)
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value!r}")
    return number


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {value!r}")
    return number


def _burst(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Serve an Assistants-v2-compatible runs API on loopback.")
    p.add_argument("--listen", type=_listen, default=("127.0.0.1", 8780), help="HOST:PORT (default 127.0.0.1:8780)")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="steady")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sessions-scenario", choices=sorted(SESSION_SCENARIOS), default=None,
                   help="openai flavor: a workload for the Agents API sessions (default: none)")
    p.add_argument("--stream-cut-rate", type=_probability, default=0.0,
                   help="session event streams: per event, the connection closes halfway through it")
    p.add_argument("--stream-stall-rate", type=_probability, default=0.0,
                   help="session event streams: per event, the stream goes silent (no keep-alives) for 60 s")
    p.add_argument("--stream-duplicate-rate", type=_probability, default=0.0,
                   help="session event streams: per event, sent twice")
    p.add_argument("--speed", type=_positive, default=1.0, help="divide every scenario duration by this")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", help="accept only this key (default: any non-empty key; env SIMULATOR_API_KEY)")
    key.add_argument("--api-key-file", type=Path, help="read the accepted key from this file")
    p.add_argument("--rate-limit-rps", type=_positive, default=None, help="token bucket refill, requests/s")
    p.add_argument("--rate-limit-burst", type=_burst, default=20, help="token bucket size")
    p.add_argument("--error-rate", type=_probability, default=0.0, help="probability of a random 500/503")
    p.add_argument("--latency", type=_non_negative, default=0.0, help="seconds added to every response")
    p.add_argument("--malformed-rate", type=_probability, default=0.0, help="probability per list item")
    p.add_argument("--truncate-rate", type=_probability, default=0.0, help="probability of a cut JSON body")
    p.add_argument("--flavor", choices=FLAVORS, default="openai",
                   help="openai (/v1), foundry (Azure AI Foundry) or langgraph (LangGraph Agent Server)")
    p.add_argument("--project", type=_project, default="sim-project", help="foundry: the project name in paths")
    p.add_argument("--token-lifetime", type=_positive, default=3600.0, help="foundry: seconds a token is valid")
    p.add_argument(
        "--identity-header",
        help="foundry: the managed identity endpoint's secret (default: env SIMULATOR_IDENTITY_HEADER, else random)",
    )
    r = p.add_argument_group("Responses API")
    r.add_argument("--responses-per-second", type=_non_negative, default=0.0,
                   help="background responses created per second (default 0: only those clients create)")
    r.add_argument("--webhook-url", help="POST a signed event to this URL when a background response ends, and "
                   "(openai flavor) when an Agents API session is created or changes status")
    r.add_argument("--webhook-secret", help="signing secret (whsec_...; default: env SIMULATOR_WEBHOOK_SECRET)")
    r.add_argument("--webhook-duplicate-rate", type=_probability, default=0.0, help="events delivered twice")
    r.add_argument("--webhook-reorder", action="store_true", help="deliver events that end together shuffled")
    r.add_argument("--webhook-late-rate", type=_probability, default=0.0, help="events held back 2 s")
    r.add_argument("--webhook-bad-signature-rate", type=_probability, default=0.0,
                   help="events preceded by a tampered copy")
    return p


def _webhook_sender(sim: Simulator, args: argparse.Namespace) -> WebhookSender | None:
    if not args.webhook_url:
        return None
    secret = (args.webhook_secret or os.environ.get("SIMULATOR_WEBHOOK_SECRET", "")).strip()
    if not secret:
        raise _UsageError("--webhook-url needs --webhook-secret (or env SIMULATOR_WEBHOOK_SECRET)")
    if not args.webhook_url.startswith(("http://", "https://")):
        raise _UsageError("--webhook-url must start with http:// or https://")
    faults = WebhookFaults(duplicate=args.webhook_duplicate_rate, reorder=args.webhook_reorder,
                           late=args.webhook_late_rate, bad_signature=args.webhook_bad_signature_rate,
                           seed=args.seed)
    try:
        return WebhookSender(Announcers(sim.responses, sim.sessions), args.webhook_url, secret, faults)
    except ValueError as err:  # SecretError: says what is wrong, never the secret
        raise _UsageError(f"--webhook-secret: {err}") from None


def _project(value: str) -> str:
    if not value or not all(ch.isalnum() or ch in "_.-" for ch in value) or not value.isascii():
        raise argparse.ArgumentTypeError(f"must be letters, digits, '_', '.' or '-', got {value!r}")
    return value


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key is not None:
        key: str = args.api_key.strip()
    elif args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise _UsageError(f"--api-key-file: cannot read {args.api_key_file}: {err.strerror}") from None
    else:
        key = os.environ.get("SIMULATOR_API_KEY", "").strip()
        return key or None
    if not key:
        raise _UsageError("the API key is empty")
    return key


def _startup_line(sim: Simulator, scenario: str) -> str:
    threads = ",".join(sim.thread_ids())
    if sim.flavor != "foundry":
        return f"simulator: scenario={scenario} base_url={sim.base_url} threads={threads}"
    # The identity header is the simulator's own loopback secret: clients need it as IDENTITY_HEADER.
    return (
        f"simulator: scenario={scenario} flavor=foundry endpoint={sim.base_url} "
        f"identity_endpoint={sim.identity_endpoint} identity_header={sim.identity_header} threads={threads}"
    )


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        api_key = _api_key(args)
    except _UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    host, port = args.listen
    faults = Faults(
        rate_limit_rps=args.rate_limit_rps,
        rate_limit_burst=args.rate_limit_burst,
        error_rate=args.error_rate,
        latency=args.latency,
        malformed_rate=args.malformed_rate,
        truncate_rate=args.truncate_rate,
    )
    identity_header = (args.identity_header or os.environ.get("SIMULATOR_IDENTITY_HEADER", "")).strip() or None
    sim = Simulator(
        scenario=args.scenario,
        seed=args.seed,
        host=host,
        port=port,
        api_key=api_key,
        speed=args.speed,
        faults=faults,
        flavor=args.flavor,
        project=args.project,
        token_lifetime=args.token_lifetime,
        identity_header=identity_header,
        sessions_scenario=args.sessions_scenario,
    )
    try:
        sender = _webhook_sender(sim, args)
    except _UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    sim.stream_faults.cut, sim.stream_faults.stall = args.stream_cut_rate, args.stream_stall_rate
    sim.stream_faults.duplicate = args.stream_duplicate_rate
    try:
        sim.start()
    except OSError as err:
        print(f"{PROG}: error: cannot listen on {host}:{port}: {err.strerror}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    workload = ResponseWorkload(sim.responses, args.responses_per_second).start() if args.responses_per_second else None
    if sender is not None:
        sender.start()
    try:
        print(_startup_line(sim, args.scenario), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for extra in (workload, sender):
            if extra is not None:
                extra.stop()
        sim.stop()
    return 0
