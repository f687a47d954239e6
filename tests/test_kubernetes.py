"""deploy/kubernetes/: both overlays render, validate against Kubernetes' schemas, and agree with the exporter.

Core objects are validated with `kubernetes-validate` against KUBERNETES_VERSION; the Prometheus Operator's
CRDs (ServiceMonitor, PrometheusRule) are not in its schemas, so their shape is checked here.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bcrypt
import kubernetes_validate
import pytest
import yaml

from exporter.config import FLAGS_BY_DEST, YAML_KEYS, parse_listen
from exporter.webconfig import load_web_config
from mixin.config import EXPORTER_JOB_REGEX
from tests.helpers import REPO_ROOT, require_binary, served_paths
from tests.tls_support import make_pki

KUBERNETES_VERSION = "1.32"  # the oldest release the manifests are validated for; stated in the README
K8S = REPO_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("single", "sharded", "tls")
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
Doc = dict[str, Any]

_rendered: dict[str, list[Doc]] = {}


def render(overlay: str) -> list[Doc]:
    if overlay not in _rendered:
        kubectl = require_binary("kubectl")
        result = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        _rendered[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return _rendered[overlay]


def one(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_spec(docs: list[Doc]) -> Doc:
    spec: Doc = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    return spec


def exporter_container(docs: list[Doc]) -> Doc:
    containers = pod_spec(docs)["containers"]
    assert len(containers) == 1
    container: Doc = containers[0]
    return container


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in a container's args."""
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def config_yaml(docs: list[Doc]) -> Doc:
    """The --config file the container is given, read from the rendered ConfigMap it mounts."""
    container = exporter_container(docs)
    path = Path(flag(container["args"], "--config") or "")
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) in path.parents)
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == mount["name"])
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"])
    doc: Doc = yaml.safe_load(cm["data"][str(path.relative_to(mount["mountPath"]))])
    return {"_configmap": cm, "_mount": mount["mountPath"], **doc}


def load_generator() -> Any:
    """deploy/kubernetes/generate_prometheusrule.py as a module (it is a script, not in a package)."""
    spec = importlib.util.spec_from_file_location("generate_prometheusrule", K8S / "generate_prometheusrule.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rules_groups_from_files() -> list[Doc]:
    groups: list[Doc] = []
    for path in sorted((REPO_ROOT / "rules").glob("*.rules.yml")):
        groups.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["groups"])
    return groups


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_validate_against_the_kubernetes_schemas(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "ServiceMonitor",
            "PrometheusRule"} <= kinds
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        # strict: unknown fields (a typo such as `readOnlyRootFileSystem`) are errors, not silently dropped.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_with_a_read_only_root_filesystem(overlay: str) -> None:
    spec = pod_spec(render(overlay))
    pod_ctx = spec.get("securityContext", {})
    for container in spec["containers"] + spec.get("initContainers", []):
        ctx = {**pod_ctx, **container.get("securityContext", {})}
        assert ctx.get("runAsNonRoot") is True, container["name"]
        assert ctx.get("runAsUser", 0) != 0, container["name"]
        assert ctx.get("readOnlyRootFilesystem") is True, container["name"]
        assert ctx.get("allowPrivilegeEscalation") is False, container["name"]
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_writable_paths_are_volumes_and_state_is_on_the_claim(overlay: str) -> None:
    docs = render(overlay)
    sts = one(docs, "StatefulSet")
    container = exporter_container(docs)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    state_dir = str(Path(config_yaml(docs)["state_file"]).parent)
    assert mounts[state_dir] in claims, "the state file must live on the PersistentVolumeClaim"
    # The pod's fsGroup makes the fresh claim writable by the non-root user.
    assert pod_spec(docs)["securityContext"]["fsGroup"] == pod_spec(docs)["securityContext"]["runAsGroup"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_the_health_endpoints_on_the_metrics_port(overlay: str) -> None:
    docs = render(overlay)
    container = exporter_container(docs)
    port_names = {p["name"] for p in container["ports"]}
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in port_names, probe
    assert served_paths() >= set(expected.values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_agree_with_the_exporter_default_and_the_config(overlay: str) -> None:
    docs = render(overlay)
    default_port = parse_listen(str(FLAGS_BY_DEST["web_listen_address"].default[0]))[1]
    container_port = {p["name"]: p["containerPort"] for p in exporter_container(docs)["ports"]}
    assert container_port["http-metrics"] == default_port
    assert [parse_listen(a)[1] for a in config_yaml(docs)["web_listen_address"]] == [default_port]
    service = one(docs, "Service")
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http-metrics", default_port, "http-metrics")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_map_holds_valid_settings_and_the_threads_file(overlay: str) -> None:
    config = config_yaml(render(overlay))
    settings = {k: v for k, v in config.items() if not k.startswith("_")}
    assert set(settings) <= set(YAML_KEYS), set(settings) - set(YAML_KEYS)
    assert "api_key" not in settings and "api_key_file" not in settings
    threads = Path(config["threads_file"])
    assert str(threads.parent) == config["_mount"]
    assert threads.name in config["_configmap"]["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_key_comes_from_an_optional_secret(overlay: str) -> None:
    env = {e["name"]: e for e in exporter_container(render(overlay))["env"]}
    ref = env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True and ref["name"] and ref["key"]
    assert all("value" not in e for e in env.values() if "KEY" in e["name"] or "TOKEN" in e["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replicas_equal_total_shards(overlay: str) -> None:
    docs = render(overlay)
    replicas = one(docs, "StatefulSet")["spec"]["replicas"]
    assert flag(exporter_container(docs)["args"], "--total-shards") == str(replicas)
    assert replicas == {"single": 1, "sharded": 3, "tls": 1}[overlay]


def test_sharded_pods_take_their_shard_from_the_hostname_and_reach_peers_by_the_headless_service() -> None:
    docs = render("sharded")
    sts, service = one(docs, "StatefulSet"), one(docs, "Service")
    args = exporter_container(docs)["args"]
    assert flag(args, "--shard") == "auto"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    url = urlsplit(flag(args, "--shard-peer-url") or "")
    host = url.hostname or ""
    pod, _, service_name = host.partition(".")
    assert pod == f"{sts['metadata']['name']}-{{shard}}", "peer host must be the StatefulSet's pod name"
    assert service_name == service["metadata"]["name"] == sts["spec"]["serviceName"]
    assert url.port == service["spec"]["ports"][0]["port"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_is_headless_and_selects_the_pods(overlay: str) -> None:
    docs = render(overlay)
    sts, service, pdb = one(docs, "StatefulSet"), one(docs, "Service"), one(docs, "PodDisruptionBudget")
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["name"] == sts["spec"]["serviceName"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_the_service_under_the_job_the_alerts_expect(overlay: str) -> None:
    docs = render(overlay)
    service, monitor = one(docs, "Service"), one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
    # Without spec.jobLabel the operator names the job after the Service.
    assert "jobLabel" not in monitor["spec"]
    assert re.fullmatch(EXPORTER_JOB_REGEX, service["metadata"]["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_rule_carries_exactly_the_rules_files(overlay: str) -> None:
    rule = one(render(overlay), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    expected = rules_groups_from_files()
    assert expected, "no rules/*.rules.yml found"
    assert [g["name"] for g in groups] == [g["name"] for g in expected], (
        "regenerate: python deploy/kubernetes/generate_prometheusrule.py")
    assert groups == expected, "regenerate: python deploy/kubernetes/generate_prometheusrule.py"
    assert len({g["name"] for g in groups}) == len(groups), "group names must be unique in one PrometheusRule"
    for group in groups:
        for r in group["rules"]:
            assert ("record" in r) != ("alert" in r) and isinstance(r["expr"], str), r


def test_committed_prometheus_rule_is_what_the_generator_writes() -> None:
    generator = load_generator()
    assert (K8S / "base" / "prometheusrule.yaml").read_text(encoding="utf-8") == generator.render(), (
        "regenerate: python deploy/kubernetes/generate_prometheusrule.py")


def test_generator_concatenates_the_groups_of_every_rules_file(tmp_path: Path) -> None:
    generator = load_generator()
    a = {"groups": [{"name": "a", "rules": [{"record": "x:y", "expr": "sum(y)"}]}]}
    b = {"groups": [{"name": "b", "rules": [{"alert": "Z", "expr": "up == 0\n", "for": "5m"}]}]}
    (tmp_path / "a.rules.yml").write_text(yaml.safe_dump(a))
    (tmp_path / "b.rules.yml").write_text(yaml.safe_dump(b))
    (tmp_path / "ignored.yml").write_text(yaml.safe_dump({"groups": [{"name": "c", "rules": []}]}))
    out = yaml.safe_load(generator.render(tmp_path))
    assert out["kind"] == "PrometheusRule" and out["spec"]["groups"] == a["groups"] + b["groups"]


def test_tls_overlay_probes_the_probe_listener_and_scrapes_https_with_basic_auth(tmp_path: Path) -> None:
    docs = render("tls")
    container, pod = exporter_container(docs), pod_spec(docs)
    args = container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert parse_listen(flag(args, "--probe-listen-address") or "")[1] == ports["http-probes"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http-probes", probe
    # The web config file is the one the overlay's ConfigMap mounts, and it is valid.
    path = Path(flag(args, "--web.config.file") or "")
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"])
    web: Doc = yaml.safe_load(cm["data"][path.name])
    tls_volume = next(v for v in pod["volumes"] if "secret" in v)
    tls_mount = next(m for m in container["volumeMounts"] if m["name"] == tls_volume["name"])
    assert Path(web["tls_server_config"]["cert_file"]).parent == Path(tls_mount["mountPath"])
    assert bcrypt.checkpw(b"change-me", web["basic_auth_users"]["prometheus"].encode())  # as its comment says
    pki = make_pki(tmp_path)
    web["tls_server_config"].update(cert_file=str(pki.server_cert), key_file=str(pki.server_key))
    local = tmp_path / "web-config.yml"
    local.write_text(yaml.safe_dump(web))
    load_web_config(local)
    promtool = require_binary("promtool")
    check = subprocess.run([promtool, "check", "web-config", str(local)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # Prometheus scrapes over HTTPS, trusting the CA of the pod's certificate Secret, with basic auth.
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["port"] == "http-metrics"
    assert endpoint["tlsConfig"]["ca"]["secret"]["name"] == tls_volume["secret"]["secretName"]
    assert {endpoint["basicAuth"][k]["key"] for k in ("username", "password")} == {"username", "password"}
