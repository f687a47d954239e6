"""The Dockerfile builds and runs as users run it: offline, from a Debian base made by .ci/debian-base and wheels
built on this host; read-only root filesystem, uid 10001, state on a volume, port published on loopback only.

Needs a Docker engine (skipped without one, failing under CI=true, where .ci/run starts it). The base image is
reused once built; the first build takes a couple of minutes (debootstrap).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import REPO_ROOT, in_ci, require_binary, wait_until

pytestmark = pytest.mark.slow

STATE_DIR = "/var/lib/assistants-exporter"
CONTAINER_PORT = 9788
# The build context the Dockerfile needs: what .dockerignore lets through, and the wheels.
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "exporter")


def docker_client() -> str:
    """$DOCKER (.ci/run sets it), else docker.io's client, else the first docker on PATH."""
    for candidate in (os.environ.get("DOCKER"), "/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return ""


def run(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> str:
    """A command's stdout; its stderr in the failure message."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(args[:4])}... exited {done.returncode}: {done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def docker() -> str:
    client = docker_client()
    answered = client and subprocess.run([client, "info"], capture_output=True, timeout=30).returncode == 0
    if not answered:
        if in_ci():
            pytest.fail("a Docker engine is required under CI=true (.ci/run starts dockerd)")
        pytest.skip("no Docker engine answers")
    return client


@pytest.fixture(scope="module")
def base(docker: str) -> str:
    """The Debian base, built by .ci/debian-base or reused from an earlier build."""
    require_binary("debootstrap")
    env = {**os.environ, "DOCKER": docker}
    return run(str(REPO_ROOT / ".ci" / "debian-base"), timeout=600, env=env).strip()


@dataclass(frozen=True)
class Target:
    """The base image's Python, for which pip fetches wheels: version, machine, glibc version."""

    python: str
    machine: str
    glibc: tuple[int, int]

    def pip_args(self) -> list[str]:
        """pip's target options: the base's Python, and every manylinux tag its glibc can run."""
        major, minor = self.glibc
        platforms = [f"manylinux_{major}_{m}_{self.machine}" for m in range(5, minor + 1)]
        legacy = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}
        platforms += [f"{name}_{self.machine}" for name, m in legacy.items() if major == 2 and m <= minor]
        args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python]
        for platform in platforms:
            args += ["--platform", platform]
        return args


def target_of(docker: str, image: str) -> Target:
    code = "import platform, sys; print(*sys.version_info[:2], platform.machine(), *platform.libc_ver())"
    out = run(docker, "run", "--rm", "--network", "none", image, "python3", "-c", code).split()
    major, minor, machine, libc, libc_version = out
    assert libc == "glibc", out
    glibc = tuple(int(part) for part in libc_version.split(".")[:2])
    return Target(f"{major}.{minor}", machine, (glibc[0], glibc[1]))


@pytest.fixture(scope="module")
def context(docker: str, base: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build context: the repository's files the Dockerfile copies, and wheels/ built on this host."""
    ctx = tmp_path_factory.mktemp("context")
    for name in CONTEXT:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, ctx / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, ctx / name)
    wheels = ctx / "wheels"
    pip = [sys.executable, "-m", "pip"]
    run(*pip, "wheel", str(REPO_ROOT), "-w", str(wheels), "--no-deps", "-q", timeout=300)
    (exporter_wheel,) = wheels.glob("assistants_exporter-*.whl")
    # The dependencies, with the azure extra, for the base's Python (from pip's cache or PyPI).
    run(
        *pip,
        "download",
        "-q",
        "--dest",
        str(wheels),
        *target_of(docker, base).pip_args(),
        f"{exporter_wheel}[azure]",
        timeout=300,
    )
    return ctx


@pytest.fixture(scope="module")
def image(docker: str, base: str, context: Path) -> Iterator[str]:
    tag = f"assistants-exporter-test:{uuid.uuid4().hex[:12]}"
    # --network none: the build must need nothing but the base and the context.
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    run(
        docker,
        "build",
        "--network",
        "none",
        "--build-arg",
        f"BASE={base}",
        "--build-arg",
        "WHEELS=wheels",
        "-t",
        tag,
        str(context),
        timeout=600,
        env=env,
    )
    yield tag
    subprocess.run([docker, "rmi", "-f", tag], capture_output=True, timeout=60)


@dataclass
class Container:
    docker: str
    id: str
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def inspect(self, template: str) -> str:
        return run(self.docker, "inspect", "--format", template, self.id).strip()

    def logs(self) -> str:
        done = subprocess.run([self.docker, "logs", self.id], capture_output=True, text=True, timeout=30)
        return done.stdout + done.stderr


@pytest.fixture
def container(docker: str, image: str) -> Iterator[Container]:
    """The image run as users run it (README, "Docker"), in demo mode, its state file on a volume."""
    volume = f"assistants-exporter-test-{uuid.uuid4().hex[:12]}"
    run(docker, "volume", "create", volume)
    name = f"assistants-exporter-test-{uuid.uuid4().hex[:12]}"
    try:
        yield _start(docker, image, name, volume)
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run([docker, "volume", "rm", "-f", volume], capture_output=True, timeout=60)


def _start(docker: str, image: str, name: str, volume: str) -> Container:
    """Starts the container and waits for /healthz."""
    cid = run(
        docker,
        "run",
        "--detach",
        "--name",
        name,
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--user",
        "10001",
        "--volume",
        f"{volume}:{STATE_DIR}",
        "--publish",
        f"127.0.0.1::{CONTAINER_PORT}",
        image,
        "--demo",
        "--state-file",
        f"{STATE_DIR}/demo.db",
    ).strip()
    published = run(docker, "port", cid, f"{CONTAINER_PORT}/tcp").split()
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    started = Container(docker, cid, int(published[0].rpartition(":")[2]))
    wait_until(lambda: _healthy_now(started), timeout=60, what=started.logs)
    return started


def _healthy_now(container: Container) -> bool:
    """/healthz answers 200; fails at once when the container has exited."""
    try:
        with urllib.request.urlopen(container.url("/healthz"), timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        if container.inspect("{{.State.Running}}") != "true":
            raise AssertionError(f"the container exited: {container.logs()[-3000:]}") from None
        return False


def finished_runs(container: Container) -> dict[str, float]:
    """Per metric, the sum of its samples that count finished runs, from a scrape of /metrics."""
    with urllib.request.urlopen(container.url("/metrics"), timeout=10) as response:
        page = response.read().decode()
    totals = {"assistants_runs_finished_total": 0.0, "assistants_run_duration_seconds_count": 0.0}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def test_demo_run_metrics_are_served_and_the_state_is_on_the_volume(container: Container) -> None:
    def counted() -> dict[str, float] | None:
        totals = finished_runs(container)
        return totals if all(totals.values()) else None

    totals = wait_until(counted, timeout=60, what="finished runs counted on /metrics")
    assert totals["assistants_runs_finished_total"] == totals["assistants_run_duration_seconds_count"]
    assert container.inspect("{{.Config.User}}") == "10001"
    assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    listing = run(
        container.docker,
        "exec",
        container.id,
        "python",
        "-c",
        f"import os; print(os.getuid(), sorted(os.listdir({STATE_DIR!r})))",
    )
    uid, _, files = listing.partition(" ")
    assert uid == "10001" and "demo.db" in files, listing


def test_the_images_healthcheck_command_passes_inside_the_container(container: Container) -> None:
    check = json.loads(container.inspect("{{json .Config.Healthcheck}}"))
    kind, *command = check["Test"]
    assert kind == "CMD", check
    done = subprocess.run([container.docker, "exec", container.id, *command], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_docker_stop_ends_the_exporter_cleanly_within_5_s(container: Container) -> None:
    started = time.monotonic()
    run(container.docker, "stop", "--time", "10", container.id, timeout=30)
    assert time.monotonic() - started < 5
    assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()[-3000:]
