"""End to end: a real Prometheus scrapes the demo exporter over TLS with basic auth (--web-config-file), with a
certificate made by the test; the same Prometheus, with a wrong password or over plain http, is refused.

Three scrape jobs point at the same exporter: `good` (https, the CA, the right password), `wrong-password` and
`plain-http`. Prometheus' own view of its targets is the proof: `good` is up and its samples are stored, the
other two are down, the wrong password with a 401.
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import free_port, require_binary, wait_until
from tests.test_e2e_prometheus import Proc, http_get, start, stop
from tests.tls_support import Pki, bcrypt_hash, make_pki

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

PASSWORD = "scrape-password-for-the-e2e-test"


def _job(name: str, port: int, scheme: str, password_file: Path, ca: Path) -> dict[str, Any]:
    return {"job_name": name, "scheme": scheme, "tls_config": {"ca_file": str(ca)},
            "basic_auth": {"username": "prometheus", "password_file": str(password_file)},
            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}


def _targets(prometheus_url: str) -> dict[str, dict[str, Any]]:
    body = http_get(f"{prometheus_url}/api/v1/targets")
    if body is None:
        return {}
    return {t["labels"]["job"]: t for t in json.loads(body)["data"]["activeTargets"]}


def _query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    body = http_get(f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    return [] if body is None else list(json.loads(body)["data"]["result"])


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, Pki, Proc]]:
    prometheus_bin = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("e2e-tls")
    pki = make_pki(tmp)
    web = tmp / "web.yml"
    web.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
        "basic_auth_users": {"prometheus": bcrypt_hash(PASSWORD, rounds=10)},  # a realistic cost
    }))
    right, wrong = tmp / "right", tmp / "wrong"
    right.write_text(PASSWORD)
    wrong.write_text("not-the-password")
    exporter_port, prom_port = free_port(), free_port()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [_job("good", exporter_port, "https", right, pki.ca),
                           _job("wrong-password", exporter_port, "https", wrong, pki.ca),
                           _job("plain-http", exporter_port, "http", right, pki.ca)],
    }))
    procs: list[Proc] = []
    try:
        exporter = start("exporter", [sys.executable, "-m", "exporter", "--demo", "--listen",
                                      f"127.0.0.1:{exporter_port}", "--state-file", str(tmp / "state.db"),
                                      "--web-config-file", str(web)], tmp / "exporter.log")
        procs.append(exporter)
        procs.append(start("prometheus", [prometheus_bin, f"--config.file={config}",
                                          f"--storage.tsdb.path={tmp / 'tsdb'}",
                                          f"--web.listen-address=127.0.0.1:{prom_port}"], tmp / "prometheus.log"))
        yield exporter_port, f"http://127.0.0.1:{prom_port}", pki, exporter
        for proc in procs:
            print(f"----- {proc.name} log (tail) -----\n{proc.tail()}")
    finally:
        for proc in procs:
            stop(proc)


def test_prometheus_scrapes_over_tls_with_basic_auth_and_is_refused_otherwise(
        tls_stack: tuple[int, str, Pki, Proc]) -> None:
    _, prometheus_url, _, exporter = tls_stack

    def all_scraped() -> dict[str, dict[str, Any]] | None:
        exporter.check_alive()
        targets = _targets(prometheus_url)
        done = len(targets) == 3 and all(t["health"] != "unknown" for t in targets.values())
        good = _query(prometheus_url, 'assistants_exporter_build_info{job="good"}')
        return targets if done and good else None

    targets = wait_until(all_scraped, timeout=60, interval=0.5, what="three scrape jobs to report")
    assert targets is not None
    assert targets["good"]["health"] == "up", targets["good"]
    assert targets["wrong-password"]["health"] == "down"
    assert "401" in targets["wrong-password"]["lastError"], targets["wrong-password"]
    assert targets["plain-http"]["health"] == "down"
    runs = _query(prometheus_url, 'assistants_runs{job="good"}')
    assert runs, "samples scraped over TLS are stored"
    up = {r["metric"]["job"]: r["value"][1] for r in _query(prometheus_url, "up")}
    assert up == {"good": "1", "wrong-password": "0", "plain-http": "0"}


def test_the_exporter_answers_401_and_refuses_plain_http(tls_stack: tuple[int, str, Pki, Proc]) -> None:
    port, _, pki, exporter = tls_stack
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    url = f"https://127.0.0.1:{port}/metrics"

    def scraped() -> httpx.Response | None:
        exporter.check_alive()
        try:
            response = httpx.get(url, verify=ctx, auth=("prometheus", PASSWORD), timeout=10)
        except httpx.HTTPError:
            return None  # not listening yet
        return response if response.status_code == 200 else None

    ok = wait_until(scraped, timeout=60, interval=0.5, what="a scrape over TLS")
    assert ok is not None and "assistants_runs" in ok.text
    denied = httpx.get(url, verify=ctx, auth=("prometheus", "wrong"), timeout=10)
    assert denied.status_code == 401 and PASSWORD not in denied.text
    assert httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ctx, timeout=10).status_code == 401
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", auth=("prometheus", PASSWORD), timeout=10)
