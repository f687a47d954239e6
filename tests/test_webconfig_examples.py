"""Every web config example that README.md and docs/web-config.md show: it loads, `promtool check web-config`
accepts it, and a live exporter started with it does what the example says.

Debian's promtool may predate some keys (2.42 knows neither client_allowed_sans, rate_limit nor the inline
cert/key/client_ca): then the test says so (a warning naming the keys) and checks the rest of the example,
with the inline PEM moved to files and the other new keys left out.
"""

from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.web_tls import CIPHER_SUITES, TLS_VERSIONS
from exporter.webconfig import TOP_KEYS, WebConfig, build_ssl_context, load_web_config
from tests.exporter_process import ExporterProcess
from tests.helpers import REPO_ROOT, require_binary, wait_until
from tests.test_webconfig_keys import REFUSED, Answer, context, fetch, status
from tests.tls_support import Pki, client_cert, make_pki

EXAMPLE_PASSWORD = "example-password"  # what the documented hash is the hash of (docs/web-config.md)
INLINE = {"cert": "cert_file", "key": "key_file", "client_ca": "client_ca_file"}
_SECTIONS = {"Config": None, "TLSConfig": "tls_server_config", "HTTPConfig": "http_server_config"}


def documented_examples() -> list[tuple[str, str]]:
    """(where, YAML) of every block in README.md and docs/web-config.md that is a web config file."""
    found = []
    for doc in (REPO_ROOT / "README.md", REPO_ROOT / "docs" / "web-config.md"):
        text = doc.read_text(encoding="utf-8")
        for match in re.finditer(r"```yaml\n(.*?)```", text, re.S):
            parsed = yaml.safe_load(match.group(1))
            if isinstance(parsed, dict) and parsed and set(parsed) <= TOP_KEYS:
                line = text[:match.start()].count("\n") + 1
                found.append((f"{doc.name}:{line}", match.group(1)))
    return found


EXAMPLES = documented_examples()


def example_dir(tmp_path: Path, example: str) -> tuple[Path, Pki]:
    """The example with the files it names (server.crt, server.key, ca.crt) beside it, and the test's PEM in
    place of any inline one."""
    pki = make_pki(tmp_path)
    pki.server_cert.rename(tmp_path / "server.crt")
    pki.server_key.rename(tmp_path / "server.key")
    pki = Pki(pki.ca, tmp_path / "server.crt", tmp_path / "server.key", pki.client_cert, pki.client_key, pki.ca_key)
    doc = yaml.safe_load(example)
    tls = doc.get("tls_server_config") or {}
    pem = {"cert": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca}
    if set(tls) & set(INLINE):
        for key in set(tls) & set(INLINE):
            tls[key] = pem[key].read_text()
        example = yaml.safe_dump(doc)
    path = tmp_path / "web.yml"
    path.write_text(example)
    return path, pki


def test_the_documented_examples_load_and_the_hash_is_of_the_documented_password(tmp_path: Path) -> None:
    import bcrypt

    assert len(EXAMPLES) >= 6  # README's, and docs' five
    keys: set[str] = set()
    for i, (where, example) in enumerate(EXAMPLES):
        directory = tmp_path / str(i)
        directory.mkdir()
        config = load_web_config(example_dir(directory, example)[0])
        assert config.tls is not None, where
        assert build_ssl_context(config) is not None
        for hashed in config.users.values():
            assert bcrypt.checkpw(EXAMPLE_PASSWORD.encode(), hashed), where
        doc = yaml.safe_load(example)
        keys |= {f"{top}.{key}" if isinstance(body, dict) else top
                 for top, body in doc.items() for key in (body if isinstance(body, dict) else [None])}
    # Between them, the examples show every tls_server_config key but the two insecure client auth modes, and
    # every key of the other sections.
    assert {"tls_server_config.client_allowed_sans", "tls_server_config.cipher_suites", "tls_server_config.cert",
            "tls_server_config.client_ca", "tls_server_config.curve_preferences", "tls_server_config.max_version",
            "tls_server_config.prefer_server_cipher_suites", "http_server_config.headers", "http_server_config.http2",
            "rate_limit.interval", "rate_limit.burst", "basic_auth_users.prometheus"} <= keys


def _promtool_check(promtool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, "check", "web-config", str(path)], capture_output=True, text=True, timeout=30)


def _without(doc: dict[str, Any], section: str | None, key: str, directory: Path) -> None:
    """The example without a key this promtool does not know: inline PEM moved to a file, others left out."""
    if section is None:
        doc.pop(key, None)
        return
    body = doc.get(section) or {}
    value = body.pop(key, None)
    if key in INLINE and value is not None:
        file = directory / f"inline-{key}.pem"
        file.write_text(value)
        body[INLINE[key]] = str(file)


@pytest.mark.prometheus
@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=[where for where, _ in EXAMPLES])
def test_promtool_accepts_the_documented_example(tmp_path: Path, index: int) -> None:
    promtool = require_binary("promtool")
    version = subprocess.run([promtool, "--version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    where, example = EXAMPLES[index]
    path, _ = example_dir(tmp_path, example)
    done = _promtool_check(promtool, path)
    too_new: list[str] = []
    while done.returncode != 0:
        unknown = re.findall(r"field (\w+) not found in type web\.(\w+)", done.stdout + done.stderr)
        assert unknown and all(t in _SECTIONS for _, t in unknown), done.stdout + done.stderr
        doc = yaml.safe_load(path.read_text())
        for key, type_name in unknown:
            _without(doc, _SECTIONS[type_name], key, tmp_path)
            too_new.append(f"{_SECTIONS[type_name] + '.' if _SECTIONS[type_name] else ''}{key}")
        assert len(too_new) < 10
        path.write_text(yaml.safe_dump(doc))
        done = _promtool_check(promtool, path)
    if too_new:
        warnings.warn(f"{version} predates {', '.join(too_new)}: {where} checked by it without them", stacklevel=1)
    assert done.returncode == 0


# ---------------------------------------------------------------------------------------------- live exporter


def _basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=[where for where, _ in EXAMPLES])
def test_the_documented_example_on_a_live_exporter(tmp_path: Path, index: int) -> None:
    where, example = EXAMPLES[index]
    path, pki = example_dir(tmp_path, example)
    config = load_web_config(path)
    exporter = ExporterProcess(["--demo", "--state-file", str(tmp_path / "state.db"), "--web-config-file", str(path)],
                               log_path=tmp_path / "exporter.log").start()
    try:
        _check_example(exporter, config, pki, tmp_path)
    except BaseException:
        print(f"----- {where}: exporter log -----\n{exporter.logs()}")
        raise
    finally:
        exporter.stop()


def _check_example(exporter: ExporterProcess, config: WebConfig, pki: Pki, tmp_path: Path) -> None:
    tls = config.tls
    assert tls is not None  # every example turns TLS on
    port = exporter.port
    sans = sorted(tls.client_allowed_sans or ())
    cert = None if tls.client_auth_type == "NoClientCert" else \
        client_cert(pki, tmp_path, "prometheus", sans[:1] or ["prometheus.example"])
    ctx = context(pki, cert)
    user = next(iter(config.users), None)
    right = _basic(user, EXAMPLE_PASSWORD) if user else {}

    def up() -> Answer | None:
        assert exporter.proc is not None and exporter.proc.poll() is None, exporter.logs()
        answer = fetch(port, ctx, "/healthz", headers=right)
        return answer if isinstance(answer, Answer) else None

    wait_until(up, timeout=30, what="the exporter answering over TLS")
    ok = fetch(port, ctx, "/metrics", headers=right)
    assert isinstance(ok, Answer) and ok.status == 200
    responses = [ok]
    allowed_versions = {v.name.replace("_", ".") for k, v in TLS_VERSIONS.items()
                        if TLS_VERSIONS[tls.min_version] <= v <= TLS_VERSIONS[tls.max_version]}
    assert ok.version in allowed_versions
    if tls.cipher_suites and ok.version != "TLSv1.3":
        assert ok.cipher in {CIPHER_SUITES[s] for s in tls.cipher_suites}
    assert fetch(port, None, "/metrics", headers=right) == REFUSED  # plain HTTP on a TLS listener
    if user:
        wrong = fetch(port, ctx, "/metrics", headers=_basic(user, "not-the-password"))
        assert isinstance(wrong, Answer) and wrong.status == 401
        assert wrong.headers["www-authenticate"].startswith("Basic")
        responses.append(wrong)
    if tls.client_auth_type in ("RequireAnyClientCert", "RequireAndVerifyClientCert"):
        assert fetch(port, context(pki), "/metrics", headers=right) == REFUSED  # no certificate
    if tls.client_auth_type == "RequireAndVerifyClientCert":
        stranger = client_cert(pki, tmp_path, "stranger", sans[:1] or ["prometheus.example"], self_signed=True)
        assert fetch(port, context(pki, stranger), "/metrics", headers=right) == REFUSED  # not signed by the CA
    for i, san in enumerate(sans):  # SANs allowed
        assert status(fetch(port, context(pki, client_cert(pki, tmp_path, f"san{i}", [san])), headers=right)) == 200
    if sans:  # and refused
        other = client_cert(pki, tmp_path, "other", ["grafana.monitoring.svc.cluster.local"])
        assert fetch(port, context(pki, other), "/metrics", headers=right) == REFUSED
    for answer in responses:  # headers sent, on the 401 too
        for name, value in config.headers:
            assert answer.headers.get(name.lower()) == value, name
    if config.rate_limit is not None:  # a burst past the limit: 429
        codes = [status(fetch(port, ctx, "/metrics", headers=right)) for _ in range(config.rate_limit.burst + 5)]
        assert 429 in codes and set(codes) <= {200, 429}, codes
        limited = fetch(port, ctx, "/metrics", headers=right)
        assert isinstance(limited, Answer) and limited.status == 429 and int(limited.headers["retry-after"]) >= 1
        for name, value in config.headers:
            assert limited.headers.get(name.lower()) == value, name
