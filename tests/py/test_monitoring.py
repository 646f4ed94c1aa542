"""The chart's operations kit (values `monitoring.*`, docs/operations.md): ServiceMonitors,
the sidecars' PodMonitor, the PrometheusRule and the Grafana dashboard.

- Quick: `helm template` (real Helm through helm-python-sdk) renders each object when
  its switch is on and nothing when off; the PodMonitor selects what the real injector
  (`polars-cloud-auth inject`) puts on pods.
- promtool (scripts/prometheus.sh build; skipped in quick runs without it, required under
  POLARS_CLOUD_AUTH_SLOW=1): `promtool check rules` on the rule group of the rendered
  PrometheusRule, `promtool test rules` on tests/prometheus/*.test.yaml, which fire every
  alert on series shaped like tests/prometheus/metrics/*.prom (real /metrics output), and
  each alert's test fails once its expression is broken.
- Slow (a real kube-apiserver, scripts/cluster.sh): the CRDs of the Prometheus Operator
  (generated from its API types, scripts/prometheus.sh crds) accept the rendered objects;
  a real Prometheus scrapes our webhook, broker and a broker-backed sidecar with relay,
  loads the rules, and every selector of every rule and panel has data.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

import cluster
import k8s

PROM_DIR = k8s.REPO / "tests" / "prometheus"
METRICS_DIR = PROM_DIR / "metrics"
RULES_FILE = "polars-cloud-auth.rules.yaml"
DASHBOARD = k8s.CHART / "files" / "dashboard.json"
ALL_ON = {"monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                         "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}}
WITH_BROKER = {**ALL_ON, "broker": {"enabled": True},
               "credentials": {"clientId": "mon-id", "clientSecret": "mon-secret"}}
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def monitoring_objects(docs: list[dict]) -> list[dict]:
    return [d for d in docs if k8s.api_group(d) == "monitoring.coreos.com"
            or (d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard"))]


def rule_group(values: dict | None = None) -> dict:
    """The rule group of the rendered PrometheusRule, as a Prometheus rule file holds it."""
    (rule,) = k8s.find(k8s.render(values or ALL_ON), "PrometheusRule")
    (group,) = rule["spec"]["groups"]
    return group


def alerts(group: dict) -> dict[str, dict]:
    return {r["alert"]: r for r in group["rules"]}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_exprs(dash: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query, with the dashboard's variables filled in as
    Grafana would for "All" and a 1m rate interval."""
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$namespace", ".*")
            out.append((panel["title"], expr))
    return out


# --- helm template -------------------------------------------------------------------
def test_off_by_default():
    docs = k8s.render()
    assert monitoring_objects(docs) == []
    assert MONITORING_KINDS.isdisjoint(k8s.kinds(docs))
    assert monitoring_objects(k8s.render({"broker": {"enabled": True}, "credentials": {
        "clientId": "a", "clientSecret": "b"}})) == []


@pytest.mark.parametrize("version", k8s.kube_versions())
def test_lint_strict_with_everything_on(version):
    report = k8s.lint(WITH_BROKER, kube_version=version)
    assert report["total_charts_linted"] == 1
    assert k8s.lint_problems(report) == []


@pytest.mark.parametrize("switch,kinds", [
    ("serviceMonitor", ["ServiceMonitor"]),
    ("podMonitor", ["PodMonitor"]),
    ("prometheusRule", ["PrometheusRule"]),
    ("dashboard", ["ConfigMap"]),
])
def test_each_switch_renders_only_its_objects(switch, kinds):
    docs = k8s.render({"monitoring": {switch: {"enabled": True}}})
    assert k8s.kinds(monitoring_objects(docs)) == kinds
    for doc in monitoring_objects(docs):
        assert k8s.metadata_problems(doc) == []
        assert doc["metadata"]["namespace"] == k8s.NAMESPACE


@pytest.mark.parametrize("version", k8s.kube_versions())
def test_the_dashboard_configmap_is_valid(version):
    """kubernetes-validate --strict; the monitoring.coreos.com kinds are checked against
    their real CRDs on the API server in the slow part below."""
    (cm,) = [d for d in monitoring_objects(k8s.render(ALL_ON)) if d["kind"] == "ConfigMap"]
    assert k8s.validate(cm, version) is None


def test_the_other_objects_do_not_change():
    """Turning the kit on adds objects and changes none of the others."""
    def rest(docs):
        drop = {"ca.crt", "tls.crt", "tls.key", "caBundle"}  # made anew on every render
        text = json.dumps([d for d in docs if d not in monitoring_objects(docs)], sort_keys=True)
        return re.sub(r'"(%s)": "[^"]*"' % "|".join(map(re.escape, drop)), "", text)
    assert rest(k8s.render(ALL_ON)) == rest(k8s.render())


def test_service_monitors_scrape_the_https_ports_with_the_charts_ca():
    docs = k8s.render(WITH_BROKER)
    monitors = k8s.find(docs, "ServiceMonitor")
    assert sorted(m["metadata"]["labels"]["app.kubernetes.io/component"] for m in monitors) == [
        "broker", "webhook"]
    tls_secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-tls"))
    for monitor in monitors:
        spec = monitor["spec"]
        # The selector matches exactly one Service: the one of this component.
        services = [s for s in k8s.find(docs, "Service")
                    if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert len(services) == 1, services
        (service,) = services
        assert spec["namespaceSelector"] == {"matchNames": [k8s.NAMESPACE]}
        (endpoint,) = spec["endpoints"]
        assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
        assert (endpoint["scheme"], endpoint["path"]) == ("https", "/metrics")
        tls = endpoint["tlsConfig"]
        assert tls["ca"]["secret"] == {"name": tls_secret["metadata"]["name"], "key": "ca.crt"}
        assert "ca.crt" in tls_secret["data"]
        # The serving certificate is made for that name.
        assert tls["serverName"] == f"{service['metadata']['name']}.{k8s.NAMESPACE}.svc"
        hosts = tls_secret["metadata"]["annotations"]["polars.cloud/tls-hosts"].split(",")
        assert tls["serverName"] in hosts
        assert "insecureSkipVerify" not in tls
    # Without the broker, only the webhook's.
    assert [m["metadata"]["name"] for m in k8s.find(k8s.render(ALL_ON), "ServiceMonitor")] == [
        f"{k8s.RELEASE}-polars-cloud-auth"]


def test_service_monitors_with_cert_manager():
    """cert-manager writes the same Secret (with ca.crt) for the names the monitors use."""
    docs = k8s.render({**WITH_BROKER, "tls": {"certManager": {"enabled": True}}})
    (cert,) = k8s.find(docs, "Certificate")
    for monitor in k8s.find(docs, "ServiceMonitor"):
        tls = monitor["spec"]["endpoints"][0]["tlsConfig"]
        assert tls["ca"]["secret"]["name"] == cert["spec"]["secretName"]
        assert tls["serverName"] in cert["spec"]["dnsNames"]


def test_monitor_options():
    values = {"monitoring": {
        "serviceMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "5s",
                           "labels": {"release": "kube-prometheus-stack"}},
        "podMonitor": {"enabled": True, "interval": "", "namespaceSelector": {
            "matchNames": ["team-a"]}, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                           "alertLabels": {"team": "platform", "severity": "ignored"},
                           "runbookBaseURL": "https://wiki.example/ops.md",
                           "webhookLatencySeconds": 0.05, "brokerRefusalRatio": 0.5,
                           "brokerIdpFailures": 7},
        "dashboard": {"enabled": True, "namespace": "grafana",
                      "labels": {"dash": "yes", "grafana_dashboard": None},  # null drops a default
                      "annotations": {"grafana_folder": "Platform"}}}}
    docs = k8s.render(values)
    (sm,) = k8s.find(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (sm["spec"]["endpoints"][0]["interval"], sm["spec"]["endpoints"][0]["scrapeTimeout"]) == (
        "15s", "5s")
    (pm,) = k8s.find(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    assert "interval" not in pm["spec"]["podMetricsEndpoints"][0]
    (rule,) = k8s.find(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    by_name = alerts(rule["spec"]["groups"][0])
    for name, r in by_name.items():
        assert r["labels"]["team"] == "platform"
        assert r["labels"]["severity"] in ("warning", "critical")  # never overridden
        assert r["annotations"]["runbook_url"] == f"https://wiki.example/ops.md#{name.lower()}"
    assert by_name["PolarsCloudAuthWebhookSlow"]["expr"].endswith("> 0.05")
    assert by_name["PolarsCloudAuthBrokerRefusals"]["expr"].endswith("> 0.5")
    assert by_name["PolarsCloudAuthBrokerIdpFailures"]["expr"].endswith("> 7")
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["labels"]["dash"] == "yes" and "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Platform"}


def test_dashboard_configmap_carries_the_sidecar_label_and_the_json():
    docs = k8s.render(ALL_ON)
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (name, text), = cm["data"].items()
    assert name.endswith(".json")
    assert json.loads(text) == dashboard()


BAD_MONITORING = {
    "interval": ({"serviceMonitor": {"interval": "30 seconds"}}, "/monitoring/serviceMonitor/interval"),
    "latency over the top bucket": ({"prometheusRule": {"webhookLatencySeconds": 0.5}},
                                    "/monitoring/prometheusRule/webhookLatencySeconds"),
    "ratio over 1": ({"prometheusRule": {"brokerRefusalRatio": 2}},
                     "/monitoring/prometheusRule/brokerRefusalRatio"),
    "unknown key": ({"dashboard": {"label": {}}}, "label"),
    "enabled as string": ({"podMonitor": {"enabled": "yes"}}, "/monitoring/podMonitor/enabled"),
}


@pytest.mark.parametrize("case", BAD_MONITORING)
def test_schema_rejects_bad_monitoring_values(case):
    values, where = BAD_MONITORING[case]
    with pytest.raises(Exception) as e:
        k8s.render({"monitoring": values})
    assert where in str(e.value), str(e.value)


@pytest.mark.parametrize("mode", k8s.INJECT_MODES)
def test_pod_monitor_selects_what_the_injector_makes(mode, tmp_path):
    """The real injector's output: an injected pod carries the label the PodMonitor
    selects, and (native, classic) a container port of that name serving /metrics."""
    (pm,) = k8s.find(k8s.render(ALL_ON), "PodMonitor")
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "app", "labels": {k8s.INJECT_LABEL: "true"},
                        "annotations": {"polars.cloud/mode": mode}},
           "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}}
    src = tmp_path / "pod.yaml"
    src.write_text(yaml.safe_dump(pod))
    out = subprocess.run([str(cluster.binary()), "inject", str(src)], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    (injected,) = k8s.load_all(out)
    assert injected["metadata"]["annotations"].get("polars.cloud/injected")
    assert pm["spec"]["selector"]["matchLabels"].items() <= injected["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for c in k8s.all_containers(injected["spec"])
             for p in c.get("ports", [])}
    if mode == "init-only":
        assert endpoint["port"] not in ports  # nothing to scrape: documented
    else:
        assert ports[endpoint["port"]] == k8s.SIDECAR_PORT
        assert endpoint["scheme"] == "http" and endpoint["path"] == "/metrics"


# --- the rules and the dashboard against what the binary exports --------------------
def exported() -> dict[str, dict[str, set[str]]]:
    """From the captured /metrics: metric family name -> label name -> values."""
    out: dict[str, dict[str, set[str]]] = {}
    for path in sorted(METRICS_DIR.glob("*.prom")):
        for line in path.read_text().splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? \S+$", line)
            assert m, line
            labels = out.setdefault(m.group(1), {})
            for k, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""):
                labels.setdefault(k, set()).add(v)
    return out


METRIC = re.compile(r"\bpolars_cloud_auth_[a-z0-9_]+")


def test_captured_metrics_come_from_every_process():
    names = exported()
    for family in ("polars_cloud_auth_webhook_reviews_total", "polars_cloud_auth_broker_requests_total",
                   "polars_cloud_auth_token_expiry_seconds", "polars_cloud_auth_relay_requests_total"):
        assert family in names, sorted(names)


def test_rules_and_panels_name_only_exported_metrics():
    names = exported()
    exprs = [r["expr"] for r in rule_group()["rules"]] + [e for _, e in panel_exprs(dashboard())]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used, exprs
    assert used <= set(names), used - set(names)
    # Label values compared with = in the rules exist in the output.
    for expr in exprs:
        for metric, body in re.findall(r"(polars_cloud_auth_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label, value in re.findall(r'([a-z_]+)="([^"]*)"', body):
                assert value in names[metric].get(label, set()), (metric, label, value)


def test_dashboard_structure():
    dash = dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "namespace"}
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["type"] == "timeseries" and panel["description"]
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for t in panel["targets"]:
            # Every query follows the namespace picker.
            assert t["expr"].count("polars_cloud_auth_") == t["expr"].count('namespace=~"$namespace"'), t
    # No two panels overlap.
    cells = set()
    for panel in dash["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_every_alert_has_a_runbook_section():
    doc = (k8s.REPO / "docs" / "operations.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.*)$", doc, re.M)}
    for name, rule in alerts(rule_group()).items():
        assert name.lower() in anchors, name
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}"
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["labels"]["severity"] in ("warning", "critical")


# --- promtool ------------------------------------------------------------------------
def prometheus_bins() -> tuple[Path, Path]:
    out = subprocess.run(["bash", str(k8s.REPO / "scripts" / "prometheus.sh"), "path"],
                         capture_output=True, text=True, check=True).stdout.split()
    prometheus, promtool = map(Path, out)
    if not (prometheus.is_file() and promtool.is_file()):
        why = f"no promtool at {promtool}: scripts/prometheus.sh build (Go, a few minutes, cached)"
        if cluster.SLOW:
            pytest.fail(f"POLARS_CLOUD_AUTH_SLOW=1 but {why}", pytrace=False)
        pytest.skip(why)
    return prometheus, promtool


def rules_dir(tmp: Path, group: dict) -> Path:
    """A directory with the rule file (as the test files name it) and the unit tests."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / RULES_FILE).write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
    for test in PROM_DIR.glob("*.test.yaml"):
        shutil.copy(test, tmp / test.name)
    return tmp


def promtool(*args, cwd: Path) -> subprocess.CompletedProcess:
    _, tool = prometheus_bins()
    return subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def unit_tests() -> list[Path]:
    return sorted(PROM_DIR.glob("*.test.yaml"))


def test_promtool_check_rules(tmp_path):
    d = rules_dir(tmp_path, rule_group())
    out = promtool("check", "rules", "--lint=all", "--lint-fatal", RULES_FILE, cwd=d)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rule_group()['rules'])} rules found" in out.stdout, out.stdout


def test_promtool_unit_tests_pass(tmp_path):
    d = rules_dir(tmp_path, rule_group())
    out = promtool("test", "rules", *[t.name for t in unit_tests()], cwd=d)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_fires_in_a_unit_test():
    fired: set[str] = set()
    for path in unit_tests():
        spec = yaml.safe_load(path.read_text())
        assert spec["rule_files"] == [RULES_FILE]
        for case in spec["tests"]:
            for a in case.get("alert_rule_test", []):
                if a.get("exp_alerts"):
                    fired.add(a["alertname"])
    assert fired == set(alerts(rule_group())), set(alerts(rule_group())) ^ fired


def test_unit_test_series_are_shaped_like_ours():
    """Every input series names an exported family with label values it exports, plus
    only the target labels Prometheus (or the Operator) adds."""
    names = exported()
    target = {"job", "instance", "namespace", "pod", "container", "service", "endpoint"}
    for path in unit_tests():
        for case in yaml.safe_load(path.read_text())["tests"]:
            for s in case["input_series"]:
                m = re.match(r"^([a-z_:][a-z0-9_:]*)\{(.*)\}$", s["series"])
                assert m, s["series"]
                family = m.group(1)
                assert family in names, family
                for k, v in re.findall(r'([a-z_]+)="([^"]*)"', m.group(2)):
                    if k == "credential":  # a name from the broker's policy
                        assert k in names[family], (family, k)
                    elif k not in target:
                        assert v in names[family].get(k, set()), (family, k, v)


def test_a_broken_expression_fails_its_unit_test(tmp_path):
    """Each alert's unit test catches a broken expression: with the expression made
    never true, `promtool test rules` fails and names that alert."""
    group = rule_group()
    for i, rule in enumerate(group["rules"]):
        broken = copy.deepcopy(group)
        broken["rules"][i]["expr"] = f"({rule['expr']}) unless on() vector(1)"
        d = rules_dir(tmp_path / rule["alert"], broken)
        out = promtool("test", "rules", *[t.name for t in unit_tests()], cwd=d)
        assert out.returncode != 0, rule["alert"]
        assert f"alertname: {rule['alert']}" in out.stdout + out.stderr, out.stdout + out.stderr


# --- slow: the CRDs and a real Prometheus ----------------------------------------------
RELEASE = "pcm"
NS = "pcm-mon"
APPS = "pcm-apps"
FULLNAME = f"{RELEASE}-polars-cloud-auth"
LIVE_VALUES = {**WITH_BROKER,
               "broker": {"enabled": True, "grants": [{"namespace": APPS, "credential": "default"}]},
               # Only the test's app namespace reaches this release's webhook.
               "webhook": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": APPS}}}}


def run_script(*args, timeout=1800) -> str:
    out = subprocess.run(["bash", str(k8s.REPO / "scripts" / "prometheus.sh"), *args],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def kube():
    return cluster.connect()


@pytest.fixture(scope="module")
def installed(kube, tmp_path_factory):
    """The Prometheus Operator's CRDs in the API server, then the chart with every
    monitoring object (and the broker), installed with the Helm CLI."""
    crds = Path(run_script("crds").splitlines()[-1])
    kube.run("apply", "--server-side", "-f", str(crds))
    for plural in ("servicemonitors", "podmonitors", "prometheusrules"):
        deadline = time.monotonic() + 60
        while kube.run("wait", "--for", "condition=established", "--timeout=30s",
                       f"crd/{plural}.monitoring.coreos.com", check=False).returncode != 0:
            assert time.monotonic() < deadline, plural
            time.sleep(0.5)
    kube.namespace(NS)
    values = tmp_path_factory.mktemp("monitoring") / "values.yaml"
    values.write_text(json.dumps(LIVE_VALUES))
    kube.helm_run("upgrade", "--install", RELEASE, str(k8s.CHART), "-n", NS, "-f", str(values))
    yield kube
    kube.helm_run("uninstall", RELEASE, "-n", NS, check=False)


def test_the_crds_accept_the_rendered_objects_unpruned(installed):
    """Stored as rendered: a field the CRD schema does not know would be pruned, a wrong
    type refused."""
    kube = installed
    rendered = monitoring_objects(k8s.render(LIVE_VALUES, release=RELEASE, namespace=NS))
    assert sorted(k8s.kinds(rendered)) == ["ConfigMap", "PodMonitor", "PrometheusRule",
                                           "ServiceMonitor", "ServiceMonitor"]
    for doc in rendered:
        stored = kube.get(doc["kind"].lower(), doc["metadata"]["name"], "-n", NS)
        assert stored.get("spec", stored.get("data")) == doc.get("spec", doc.get("data")), doc["kind"]


def test_the_crd_schemas_are_enforced(installed, tmp_path):
    """The same objects with a wrong field are refused by the API server (server-side
    dry run), so the acceptance above means something."""
    kube = installed
    rendered = monitoring_objects(k8s.render(LIVE_VALUES, release=RELEASE, namespace=NS))
    sm = copy.deepcopy(k8s.find(rendered, "ServiceMonitor")[0])
    sm["spec"]["endpoints"][0]["interval"] = "30 seconds"
    rule = copy.deepcopy(k8s.one(rendered, "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "soon"
    for bad in (sm, rule):
        out = kube.create(bad, "--dry-run=server", check=False)
        assert out.returncode != 0
        assert "Invalid value" in out.stderr, out.stderr


class Prometheus:
    """The real Prometheus (scripts/prometheus.sh build) on a loopback port, scraping
    static targets every second and evaluating the chart's rules."""

    def __init__(self, tmp: Path, scrape_configs: list[dict], rules: dict):
        prometheus, _ = prometheus_bins()
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "rules.yaml").write_text(yaml.safe_dump({"groups": [rules]}, sort_keys=False))
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "rules.yaml")],
            "scrape_configs": scrape_configs}))
        self.port = cluster.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_PROXY": "127.0.0.1,localhost"}
        self.proc = subprocess.Popen(
            [str(prometheus), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        self.wait(self.ready, "ready")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/-/ready", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> dict:
        """GET /api/v1/<path>: the data of a successful answer."""
        url = f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def wait(self, what, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"prometheus: {name}: {self.log.read_text()[-3000:]}"
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def post_review(webhook, name: str) -> dict:
    req = urllib.request.Request(webhook.base + "/mutate", method="POST",
                                 data=(k8s.REPO / "tests" / "data" / "admission" / name).read_bytes(),
                                 headers={"Content-Type": "application/json"})
    context = ssl.create_default_context(cafile=str(webhook.tls["ca"]))
    with urllib.request.urlopen(req, context=context, timeout=10) as r:
        return json.load(r)["response"]


def metrics_text(url: str, ca: Path | None) -> str:
    if ca is not None:
        status, text = cluster.https_get(url, ca)
    else:
        with urllib.request.urlopen(url, timeout=5) as r:
            status, text = r.status, r.read().decode()
    assert status == 200, text
    return text


@pytest.fixture(scope="module")
def stack(installed, tmp_path_factory):
    """Our webhook, broker (with the chart's RBAC, the test IdP's service account) and a
    broker-backed sidecar with relay, on the host; some traffic on each; a Prometheus
    scraping the three with the labels the Operator gives targets (namespace, pod)."""
    import idp_peer
    import test_broker as tb

    kube = installed
    tmp = tmp_path_factory.mktemp("stack")
    for d in ("broker", "sidecar"):
        (tmp / d).mkdir()
    idp = idp_peer.Idp(tb.SECRETS, ttl=60)
    procs = [idp]
    try:
        creds = tb.credential_dirs(tmp, {"default": "prod-sa"})
        policy = tmp / "policy.yaml"
        tb.write_policy(policy, creds, {"credentials": {"default": {"dir": "X"}},
                                        "grants": [{"namespace": APPS, "credential": "default"}]})
        config = tb.kubeconfig_for(kube, f"{FULLNAME}-broker", NS, tmp / "broker.kubeconfig")
        broker = tb.Broker(tmp / "broker", config, idp.issuer, policy)
        procs.append(broker)
        kube.namespace(APPS)
        tb.stored_pod(kube, APPS, "app-1")
        assertion = tmp / "sa-token"
        assertion.write_text(tb.sa_token(kube, APPS, "default", "app-1"))
        sidecar = tb.Sidecar(tmp / "sidecar", broker, assertion, idp.issuer, relay=True)
        procs.append(sidecar)
        sidecar.wait(lambda: sidecar.ready() == 200)
        (deployment,) = k8s.find(k8s.render(ALL_ON, release=RELEASE, namespace=NS), "Deployment")
        (container,) = k8s.pod_spec(deployment)["containers"]
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        webhook = cluster.Webhook(env, cluster.make_tls(tmp / "webhook-tls"), tmp / "webhook.log")
        procs.append(webhook)
        # Traffic: an injected pod and a refused one; a granted and a refused token request.
        assert post_review(webhook, "create-pod.json")["allowed"] is True
        assert post_review(webhook, "conflict-annotation.json")["allowed"] is False
        assert broker.request(None)[0] == 401  # no client assertion: unauthenticated

        targets = {
            "webhook": (webhook.base, webhook.tls["ca"], NS, "pcm-webhook-0"),
            "broker": (broker.base, broker.tls["ca"], NS, "pcm-broker-0"),
            "sidecar": (f"http://127.0.0.1:{sidecar.port}", None, APPS, "app-1"),
        }
        captured = {name: metrics_text(base + "/metrics", ca) for name, (base, ca, _, _) in targets.items()}
        if os.environ.get("POLARS_CLOUD_AUTH_UPDATE_METRICS") == "1":
            for name, text in captured.items():
                (METRICS_DIR / f"{name}.prom").write_text(text)
        scrape = []
        for name, (base, ca, ns, pod) in targets.items():
            job = {"job_name": name, "scheme": base.split(":")[0], "metrics_path": "/metrics",
                   "static_configs": [{"targets": [base.split("//")[1]],
                                       "labels": {"namespace": ns, "pod": pod}}]}
            if ca is not None:
                job["tls_config"] = {"ca_file": str(ca)}
            scrape.append(job)
        prom = Prometheus(tmp / "prometheus", scrape, rule_group(LIVE_VALUES))
        procs.append(prom)

        def scraped_twice():
            active = prom.api("targets")["activeTargets"]
            return len(active) == 3 and all(t["health"] == "up" for t in active) and \
                len(prom.api("query", query="count_over_time(up[1m]) >= 3")["result"]) == 3
        prom.wait(scraped_twice, "every target up, scraped three times")
        yield {"prom": prom, "captured": captured, "targets": targets, "sidecar": sidecar,
               "webhook": webhook}
    finally:
        for p in reversed(procs):
            p.stop()
        kube.run("delete", "pods", "--all", "-n", APPS, "--wait=false", check=False)


def test_prometheus_scrapes_webhook_broker_and_sidecar(stack):
    prom = stack["prom"]
    active = prom.api("targets")["activeTargets"]
    figures = {t["labels"]["job"]: (t["health"], t["scrapeUrl"].split(":")[0],
                                    round(t["lastScrapeDuration"] * 1000, 2)) for t in active}
    samples = {r["metric"]["job"]: r["value"][1]
               for r in prom.api("query", query="scrape_samples_scraped")["result"]}
    print(f"\nscrape results (job: health, scheme, last scrape ms, samples): "
          + ", ".join(f"{j}: {h}, {s}, {ms}, {samples.get(j)}" for j, (h, s, ms) in sorted(figures.items())))
    assert {j: h for j, (h, _, _) in figures.items()} == {"webhook": "up", "broker": "up", "sidecar": "up"}
    assert figures["webhook"][1] == figures["broker"][1] == "https"


def selectors(node) -> list[str]:
    """The vector and matrix selectors of a parsed expression (/api/v1/parse_query), as
    instant-query selectors."""
    if isinstance(node, list):
        return [s for n in node for s in selectors(n)]
    if not isinstance(node, dict):
        return []
    if node.get("type") in ("vectorSelector", "matrixSelector"):
        parts = [f'{m["name"]}{m["type"]}{json.dumps(m["value"])}' for m in node["matchers"]]
        return ["{" + ", ".join(parts) + "}"]
    return [s for v in node.values() for s in selectors(v)]


def test_every_rule_loads_and_evaluates(stack):
    prom = stack["prom"]
    groups = prom.api("rules")["groups"]
    (group,) = groups
    names = [r["name"] for r in group["rules"]]
    assert names == list(alerts(rule_group(LIVE_VALUES))), names
    prom.wait(lambda: all(r.get("lastEvaluation", "").startswith("20") and r["health"] == "ok"
                          for r in prom.api("rules")["groups"][0]["rules"]), "rules evaluated")


def test_every_selector_of_the_rules_and_the_dashboard_has_data(stack):
    prom = stack["prom"]
    exprs = [(r["alert"], r["expr"]) for r in rule_group(LIVE_VALUES)["rules"]] + panel_exprs(dashboard())
    checked = set()
    empty = []
    for where, expr in exprs:
        ast = prom.api("parse_query", query=expr)
        found = selectors(ast)
        assert found, (where, expr)
        for sel in found:
            if sel in checked:
                continue
            checked.add(sel)
            if not prom.api("query", query=sel)["result"]:
                empty.append((where, sel))
        prom.api("query", query=expr)  # evaluates without error
    print(f"\n{len(exprs)} expressions, {len(checked)} distinct selectors, all with data")
    assert empty == []


def test_the_selector_check_can_fail(stack):
    """The canary of the check above: a name we do not export, or a label value we never
    write, parses fine and has no data."""
    prom = stack["prom"]
    for expr in ('rate(polars_cloud_auth_webhook_errors_total[5m])',
                 'polars_cloud_auth_failures_total{class="fatal"}'):
        (sel,) = selectors(prom.api("parse_query", query=expr))
        assert prom.api("query", query=sel)["result"] == [], sel


def test_the_dashboards_namespace_variable_has_values(stack):
    prom = stack["prom"]
    (var,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "namespace"]
    m = re.fullmatch(r"label_values\((.*), namespace\)", var["definition"])
    assert m, var["definition"]
    values = prom.api("label/namespace/values", **{"match[]": m.group(1)})
    assert sorted(values) == sorted({NS, APPS})


def test_every_panel_shows_data(stack):
    prom = stack["prom"]
    blank = [(t, e) for t, e in panel_exprs(dashboard()) if not prom.api("query", query=e)["result"]]
    assert blank == []


def test_the_captured_output_is_what_the_processes_serve(stack):
    """tests/prometheus/metrics/*.prom (the shapes the unit tests copy) have the families,
    label names and label values (but credential names) of the live /metrics
    (POLARS_CLOUD_AUTH_UPDATE_METRICS=1 rewrites them)."""
    def shape(text: str) -> set[str]:
        out = set()
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series = line.rsplit(" ", 1)[0]
                out.add(re.sub(r'credential="[^"]*"', 'credential=""', series))
        return out
    for name, text in stack["captured"].items():
        assert shape(text) == shape((METRICS_DIR / f"{name}.prom").read_text()), name


def test_a_real_denial_fires_its_alert(stack):
    """End to end on the real binary's output: a pod the webhook denies while Prometheus
    watches makes PolarsCloudAuthWebhookDenials fire, with the pod's labels."""
    prom, webhook = stack["prom"], stack["webhook"]

    def firing() -> list[dict]:
        return [a for a in prom.api("alerts")["alerts"]
                if a["labels"]["alertname"] == "PolarsCloudAuthWebhookDenials" and a["state"] == "firing"]
    # The denial before the first scrape is not an increase Prometheus can see.
    assert firing() == []
    assert post_review(webhook, "conflict-annotation.json")["allowed"] is False
    prom.wait(lambda: firing(), "PolarsCloudAuthWebhookDenials firing", timeout=30)
    (alert,) = firing()
    assert (alert["labels"]["result"], alert["labels"]["namespace"], alert["labels"]["pod"]) == (
        "denied", NS, "pcm-webhook-0")
    assert alert["annotations"]["runbook"] == "docs/operations.md#polarscloudauthwebhookdenials"
