"""The README's push examples, exactly as written, against a live exporter running `--source push` alone."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.exporter_process import ExporterProcess, total
from tests.helpers import REPO_ROOT, require_binary, wait_until

pytestmark = pytest.mark.slow

TOKEN = "readme-push-token-0123456789"
DOCUMENTED_URL = "http://127.0.0.1:9788"


def _push_section() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("\n## Push\n")
    return readme[start:readme.index("\n## ", start + 1)]


def _block(language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", _push_section(), re.S)
    assert match, f"no {language} block in the README's Push section"
    return match.group(1)


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[ExporterProcess]:
    # No API key: push alone needs none.
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ASSISTANTS_EXPORTER_API_KEY")}
    proc = ExporterProcess(["--source", "push", "--state-file", str(tmp_path / "state.db")],
                           log_path=tmp_path / "exporter.log")
    proc.env = {**env, "ASSISTANTS_EXPORTER_PUSH_TOKEN": TOKEN, "PYTHONPATH": str(REPO_ROOT)}
    proc.start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_the_readme_curl_example_runs_as_documented(exporter: ExporterProcess) -> None:
    curl = require_binary("curl")
    script = _block("sh")
    assert script.lstrip().startswith("curl ") and DOCUMENTED_URL in script
    documented = re.search(r"answers `(\{.*?\})`", _push_section())
    assert documented, "the README states the curl example's answer"
    result = subprocess.run(["bash", "-c", script.replace(DOCUMENTED_URL, exporter.url)], capture_output=True,
                            text=True, timeout=30, env={**os.environ, "ASSISTANTS_EXPORTER_PUSH_TOKEN": TOKEN,
                                                        "PATH": f"{Path(curl).parent}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(documented.group(1))
    # Committed before the answer; published on /metrics within a fraction of a second.
    wait_until(lambda: total(exporter.scrape(), "assistants_runs_finished_total", status="completed",
                             source="push", assistant_id="asst_1") == 1, 10, what="the pushed run on /metrics")
    assert total(exporter.scrape(), "assistants_run_tokens_total", type="prompt", source="push") == 120
    # The request is counted once answered, so the page shows it after the next tick.
    wait_until(lambda: total(exporter.scrape(), "assistants_exporter_push_requests_total", code="200") == 1, 10,
               what="the request to be counted")
    # Sent again: idempotent.
    again = subprocess.run(["bash", "-c", script.replace(DOCUMENTED_URL, exporter.url)], capture_output=True,
                           text=True, timeout=30, env={**os.environ, "ASSISTANTS_EXPORTER_PUSH_TOKEN": TOKEN})
    assert json.loads(again.stdout) == {"accepted": 0, "duplicates": 1, "stale": 1, "invalid": []}


def test_the_readme_python_client_runs_as_documented(exporter: ExporterProcess,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    source = _block("python")
    assert len(source.strip().splitlines()) <= 10 and DOCUMENTED_URL in source
    monkeypatch.setenv("ASSISTANTS_EXPORTER_PUSH_TOKEN", TOKEN)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source.replace(DOCUMENTED_URL, exporter.url), "README.md", "exec"), {})
    assert ast.literal_eval(out.getvalue().strip()) == {"accepted": 1, "duplicates": 0, "stale": 0, "invalid": []}
    wait_until(lambda: total(exporter.scrape(), "assistants_run_errors_total", code="server_error",
                             source="push") == 1, 10, what="the pushed failure on /metrics")
    assert total(exporter.scrape(), "assistants_runs_finished_total", status="failed") == 1
