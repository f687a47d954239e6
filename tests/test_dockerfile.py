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


def stages() -> list[Stage]:
    """The Dockerfile's stages, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.I)
            assert m, line
            result.append(Stage(m.group(1), m.group(2)))
        else:
            assert result, f"{instruction} before FROM"
            result[-1].instructions.append((instruction, rest.strip()))
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


def test_multi_stage_wheel_built_then_installed_with_a_defined_extra() -> None:
    *builders, final = stages()
    assert builders, "the wheel must be built in a separate stage"
    assert "slim" in final.base
    built = [b for b in builders if any(re.search(r"pip wheel|-m build", a) for a in b.args("RUN"))]
    assert built and built[0].name, "a named builder stage must build the wheel"
    installs = [a for a in final.args("RUN") if "pip install" in a]
    assert len(installs) == 1
    assert f"from={built[0].name}" in installs[0] and "--find-links" in installs[0]
    m = re.search(r"'assistants-exporter\[(\w+)\]'", installs[0])
    assert m and m.group(1) == "azure"
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("azure-identity") for dep in extras[m.group(1)])
    # The final image gets the package from the wheel only, never from the source tree.
    assert not final.args("COPY") and not final.args("ADD")
    for src in (s for b in builders for a in b.args("COPY") for s in a.split()[:-1] if not s.startswith("--")):
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
    assert not any(k.startswith("ASSISTANTS_EXPORTER_") for k in env), "image env would override --config"
    mounts = yaml.safe_load(STATEFULSET.read_text())["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert volume in {m["mountPath"] for m in mounts}


def test_exposed_port_and_healthcheck_match_the_server() -> None:
    final = stages()[-1]
    assert final.args("EXPOSE") == [str(default_port())]
    (check,) = final.args("HEALTHCHECK")
    url = urlsplit(re.search(r"http://[^'\" ]+", check).group(0))  # type: ignore[union-attr]
    assert url.port == default_port()
    assert url.path in served_paths()
    assert url.path == "/healthz"


def test_compose_builds_this_dockerfile() -> None:
    compose = yaml.safe_load((REPO_ROOT / "deploy" / "docker-compose.yml").read_text())
    build = compose["services"]["exporter"]["build"]
    assert (REPO_ROOT / "deploy" / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
