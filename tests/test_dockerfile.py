"""The Dockerfile agrees with the code, pyproject.toml and the Kubernetes manifests (no docker engine needed)."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import yaml

from exporter.config import FLAGS_BY_DEST, default_state_file, parse_listen
from tests.helpers import REPO_ROOT, served_paths

DOCKERFILE = REPO_ROOT / "Dockerfile"
STATEFULSET = REPO_ROOT / "deploy" / "kubernetes" / "base" / "statefulset.yaml"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def global_args() -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults."""
    args: dict[str, str] = {}
    for instruction, rest in _instructions():
        if instruction == "FROM":
            break
        assert instruction == "ARG", f"{instruction} before FROM"
        name, _, default = rest.partition("=")
        args[name] = default
    return args


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            result.append((instruction.upper(), rest.strip()))
    return result


def stages() -> list[Stage]:
    """The Dockerfile's stages, their bases with the global ARGs' defaults substituted."""
    defaults = global_args()
    result: list[Stage] = []
    for instruction, rest in _instructions():
        if instruction == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert m, rest
            base = re.sub(r"\$\{(\w+)\}", lambda arg: defaults[arg.group(1)], m.group(1))
            result.append(Stage(base, m.group(2)))
        elif result:
            result[-1].instructions.append((instruction, rest))
    return result


def final_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stages()[-1].args("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def default_port() -> int:
    return parse_listen(str(FLAGS_BY_DEST["web_listen_address"].default[0]))[1]


def test_base_is_an_argument_defaulting_to_python_slim_for_every_stage() -> None:
    assert global_args()["BASE"] == "python:3.12-slim"
    text = DOCKERFILE.read_text(encoding="utf-8")
    # Both stages: the venv built in the first one runs on the second one's interpreter.
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE}", "${BASE}"]
    assert [stage.base for stage in stages()] == ["python:3.12-slim"] * 2


def test_venv_built_from_wheels_or_source_and_copied_alone_into_the_final_stage() -> None:
    builder, final = stages()
    assert builder.name
    assert any(a.startswith("WHEELS=") for a in builder.args("ARG"))
    (install,) = builder.args("RUN")
    venv = re.search(r"python3 -m venv (\S+)", install).group(1)  # type: ignore[union-attr]
    # From the wheels alone (no index: the build needs no network), else from the source tree.
    m = re.search(r"--no-index --find-links \"/src/\$WHEELS\" +'assistants-exporter\[(\w+)\]'", install)
    assert m, install
    assert f"'/src[{m.group(1)}]'" in install
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("azure-identity") for dep in extras[m.group(1)])
    # The final image gets the venv only, never the source tree or the wheels.
    assert final.args("COPY") == [f"--from={builder.name} {venv} {venv}"] and not final.args("ADD")
    # The entry point and the HEALTHCHECK's python are the venv's.
    assert final_env()["PATH"] == f"{venv}/bin:$PATH"
    for src in (s for a in builder.args("COPY") for s in a.split()[:-1] if not s.startswith("--")):
        assert (REPO_ROOT / src).exists(), src


def test_runs_as_the_numeric_non_root_user_the_statefulset_expects() -> None:
    users = stages()[-1].args("USER")
    assert users and users[-1].isdigit() and int(users[-1]) != 0, "numeric, so runAsNonRoot can verify it"
    pod = yaml.safe_load(STATEFULSET.read_text())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(users[-1])


def test_nothing_writes_outside_the_state_volume() -> None:
    final = stages()[-1]
    env = final_env()
    (volume,) = re.findall(r'"([^"]+)"', final.args("VOLUME")[0])
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert PurePosixPath(env["HOME"]) == PurePosixPath(volume)
    # The exporter's own default state file, computed from the image's environment, is on the volume.
    state = PurePosixPath(default_state_file(env))
    assert PurePosixPath(volume) in state.parents, state
    # Image env would override --config; the one exception is the loopback probe listener the HEALTHCHECK asks.
    assert [k for k in env if k.startswith("ASSISTANTS_EXPORTER_")] == ["ASSISTANTS_EXPORTER_PROBE_LISTEN_ADDRESS"]
    mounts = yaml.safe_load(STATEFULSET.read_text())["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert volume in {m["mountPath"] for m in mounts}


def test_exposed_port_and_healthcheck_match_the_server() -> None:
    final = stages()[-1]
    assert final.args("EXPOSE") == [str(default_port())]
    (check,) = final.args("HEALTHCHECK")
    url = urlsplit(re.search(r"http://[^'\" ]+", check).group(0))  # type: ignore[union-attr]
    # The check asks the probe-only listener the image turns on, so TLS or basic auth on the main port
    # cannot fail it.
    probe_host, probe_port = parse_listen(final_env()["ASSISTANTS_EXPORTER_PROBE_LISTEN_ADDRESS"])
    assert (url.hostname, url.port) == (probe_host, probe_port) == ("127.0.0.1", 9789)
    assert url.path in served_paths()
    assert url.path == "/healthz"


def test_compose_builds_this_dockerfile() -> None:
    compose = yaml.safe_load((REPO_ROOT / "deploy" / "docker-compose.yml").read_text())
    build = compose["services"]["exporter"]["build"]
    assert (REPO_ROOT / "deploy" / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


def test_readme_offline_build_passes_the_dockerfiles_arguments_and_a_directory_in_the_context() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Building without a registry or PyPI") :].split("\n## ")[0]
    (build,) = (line for line in section.splitlines() if line.startswith("docker build "))
    passed = dict(re.findall(r"--build-arg (\w+)=(\S+)", build))
    builder_args = {a.partition("=")[0] for stage in stages() for a in stage.args("ARG")}
    assert set(passed) == {"BASE", "WHEELS"} and "WHEELS" in builder_args
    assert f"`BASE`, `{global_args()['BASE']}` by default" in " ".join(section.split())
    # The wheels are written where WHEELS points, and .dockerignore keeps that directory in the context.
    assert f"--wheel-dir {passed['WHEELS']}\n" in section
    ignored = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert not any(PurePosixPath(passed["WHEELS"]).match(pattern) for pattern in ignored)
    assert "python3-venv" in section and "python3-venv" in (REPO_ROOT / ".ci" / "debian-base").read_text()
