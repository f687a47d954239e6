"""mixin.preview: the README's pictures are drawn from the current specification, and drawing fails loudly."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mixin import preview
from mixin.config import DEFAULT, MixinConfig
from tests.helpers import REPO_ROOT

README = REPO_ROOT / "README.md"


@pytest.mark.parametrize("picture", preview.pictures(), ids=lambda p: p.file)
def test_committed_picture_shows_the_current_specification(picture: preview.Picture) -> None:
    path = preview.IMAGES / picture.file
    assert path.exists(), "missing: ASSISTANTS_EXPORTER_WRITE_IMAGES=1 pytest tests/test_e2e_prometheus.py"
    with Image.open(path) as image:
        assert image.text.get(preview.SPEC_KEY) == picture.spec_hash(), (
            f"{picture.file} was drawn from another specification: "
            "ASSISTANTS_EXPORTER_WRITE_IMAGES=1 pytest tests/test_e2e_prometheus.py")


def test_readme_shows_every_picture_and_no_other() -> None:
    shown = set(re.findall(r"\(docs/images/([\w.-]+\.png)\)", README.read_text()))
    assert shown == {p.file for p in preview.pictures()}
    assert {p.name for p in preview.IMAGES.glob("*.png")} == shown, "docs/images has pictures no one shows"


def test_the_spec_hash_changes_with_a_threshold() -> None:
    looser = MixinConfig(thresholds=dataclasses.replace(DEFAULT.thresholds, failure_ratio=0.2))
    before = {p.file: p.spec_hash() for p in preview.pictures()}
    after = {p.file: p.spec_hash() for p in preview.pictures(looser)}
    assert before["failure-ratio.png"] != after["failure-ratio.png"]
    assert before["runs-by-status.png"] == after["runs-by-status.png"]


def test_line_names() -> None:
    assert preview.line_name(preview.Line("x", "status p95"), {"status": "queued"}) == "queued p95"
    assert preview.line_name(preview.Line("x", "=1h"), {"status": "queued"}) == "1h"
    assert preview.line_name(preview.Line("x", "source"), {}) == "(none)"


class FakePrometheus(BaseHTTPRequestHandler):
    """query_range answering from `results` by query text; anything else is an empty matrix."""

    results: dict[str, list[dict[str, Any]]] = {}

    def do_GET(self) -> None:
        from urllib.parse import parse_qs, urlparse

        query = parse_qs(urlparse(self.path).query)["query"][0]
        body = json.dumps({"status": "success",
                           "data": {"resultType": "matrix", "result": self.results.get(query, [])}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        FakePrometheus.results = {}


def series(metric: dict[str, str], values: list[float]) -> dict[str, Any]:
    return {"metric": metric, "values": [[1000 + 60 * i, str(v)] for i, v in enumerate(values)]}


def test_draws_every_picture_with_its_hash(fake_prometheus: str, tmp_path: Path) -> None:
    FakePrometheus.results = {line.expr: [series({"status": "queued", "assistant_id": "asst_a"}, [0.1, 0.2, 0.3])]
                              for p in preview.pictures() for line in p.lines}
    paths = preview.render_all(fake_prometheus, tmp_path, minutes=3, end=1120)
    assert [p.name for p in paths] == [p.file for p in preview.pictures()]
    for picture, path in zip(preview.pictures(), paths, strict=True):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.text[preview.SPEC_KEY] == picture.spec_hash()


def test_a_query_without_data_is_an_error(fake_prometheus: str, tmp_path: Path) -> None:
    first = preview.pictures()[0]
    FakePrometheus.results = {first.lines[0].expr: [series({"status": "queued"}, [float("nan")])]}
    with pytest.raises(RuntimeError, match=f"{first.file}: no data"):
        preview.render_all(fake_prometheus, tmp_path, minutes=3, end=1120)
    assert preview.main(["--prometheus", fake_prometheus, "--out", str(tmp_path)]) == 1
