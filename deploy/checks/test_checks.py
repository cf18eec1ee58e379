"""Self-tests of the deployment checkers: each breaks a real artefact in one known way and
asserts that the checker names that fault. Run by scripts/check-deploy.sh:

    .venv-deploy/bin/python -m unittest discover -s deploy/checks -p 'test_*.py'
"""

from __future__ import annotations

import copy
import json
import tempfile
import unittest
from pathlib import Path

import yaml

import check_compose
import check_dashboard
import check_manifests
import check_rules
import k8s_rules
import promql

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VERSIONS = ["1.29", "1.37"]


def load_dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "grain.json").read_text())


def base_render() -> list[dict]:
    """The kustomize base as kustomize renders it, minus name hashes and common labels."""
    base = DEPLOY / "k8s" / "base"
    docs = [
        yaml.safe_load((base / f).read_text())
        for f in ("deployment.yaml", "service.yaml", "servicemonitor.yaml", "hpa.yaml")
    ]
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "grain-config"},
            "data": {"config.toml": (base / "config.toml").read_text()},
        }
    )
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "grain-api-keys"},
            "type": "Opaque",
            "data": {"GRAIN_API_KEYS": ""},
        }
    )
    return docs


def kind(docs: list[dict], name: str) -> dict:
    return next(d for d in docs if d["kind"] == name)


def container(docs: list[dict]) -> dict:
    return kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


class DashboardTests(unittest.TestCase):
    def problems(self, dashboard: dict) -> str:
        return "\n".join(check_dashboard.check(dashboard)[0])

    def first_panel(self, dashboard: dict) -> dict:
        return next(p for p in dashboard["panels"] if p["type"] == "timeseries")

    def test_real_dashboard_passes(self):
        self.assertEqual(self.problems(load_dashboard()), "")

    def test_unknown_metric(self):
        d = load_dashboard()
        self.first_panel(d)["targets"][0]["expr"] = 'sum(rate(grain_requests_total{job=~"$job"}[5m]))'
        self.assertIn("grain_requests_total is not a Grain metric", self.problems(d))

    def test_duplicate_panel_id(self):
        d = load_dashboard()
        d["panels"][2]["id"] = d["panels"][1]["id"]
        self.assertIn("not unique", self.problems(d))

    def test_overlapping_panels(self):
        d = load_dashboard()
        d["panels"][2]["gridPos"] = dict(d["panels"][1]["gridPos"])
        self.assertIn("overlaps", self.problems(d))

    def test_panel_outside_grid(self):
        d = load_dashboard()
        self.first_panel(d)["gridPos"]["x"] = 20
        self.assertIn("outside the 24-column grid", self.problems(d))

    def test_hardcoded_datasource(self):
        d = load_dashboard()
        self.first_panel(d)["datasource"] = {"type": "prometheus", "uid": "abc123"}
        self.assertIn("datasource must be", self.problems(d))

    def test_undefined_variable(self):
        d = load_dashboard()
        self.first_panel(d)["targets"][0]["expr"] = (
            'sum(rate(grain_request_success_total{model="$model"}[5m]))'
        )
        problems = self.problems(d)
        self.assertIn("undefined variable $model", problems)
        self.assertIn("no label 'model'", problems)

    def test_quantile_without_le(self):
        d = load_dashboard()
        self.first_panel(d)["targets"][0]["expr"] = (
            "histogram_quantile(0.99, sum(rate(grain_time_to_first_token_seconds_bucket[5m])))"
        )
        self.assertIn("by (le", self.problems(d))

    def test_rate_of_gauge(self):
        d = load_dashboard()
        self.first_panel(d)["targets"][0]["expr"] = "sum(rate(grain_kv_cache_usage_ratio[5m]))"
        self.assertIn("gauge, not a counter", self.problems(d))

    def test_missing_required_panel(self):
        d = load_dashboard()
        d["panels"] = [p for p in d["panels"] if "kv_cache" not in json.dumps(p)]
        self.assertIn("no panel shows KV usage", self.problems(d))

    def test_missing_datasource_variable(self):
        d = load_dashboard()
        d["templating"]["list"] = [v for v in d["templating"]["list"] if v["name"] != "datasource"]
        self.assertIn("needs a variable `datasource`", self.problems(d))


class PromqlTests(unittest.TestCase):
    def test_closed_label_values(self):
        problems = promql.lint('grain_visual_tokens_total{kind="all"}')
        self.assertEqual(
            problems, ["grain_visual_tokens_total: kind='all' is not one of ['full', 'selected']"]
        )

    def test_histogram_used_bare(self):
        problems = promql.lint("rate(grain_router_duration_seconds[5m])")
        self.assertEqual(
            problems, ["grain_router_duration_seconds is a histogram: use its _bucket/_sum/_count series"]
        )

    def test_untyped_family_rejected(self):
        self.assertIn("not fixed by DESIGN.md", promql.lint("grain_batch_size")[0])

    def test_histogram_series_resolve_to_family(self):
        self.assertEqual(promql.resolve("grain_request_prompt_tokens_sum")[0], "grain_request_prompt_tokens")
        self.assertIsNone(promql.resolve("grain_num_requests_waiting_sum"))

    def test_rust_cross_check(self):
        rust = 'pub const TTFT: &str = "time_to_first_token_seconds";\nlet c = "grain_request_success_total";'
        missing = promql.missing_from_rust(
            {
                "grain_time_to_first_token_seconds_bucket",
                "grain_request_success_total",
                "grain_kv_cache_usage_ratio",
            },
            rust,
        )
        self.assertEqual(missing, ["grain_kv_cache_usage_ratio"])


class ManifestTests(unittest.TestCase):
    adapter = {"grain_num_requests_waiting"}

    def problems(self, docs: list[dict], flavor: str = "cpu") -> str:
        return "\n".join(k8s_rules.check_render(docs, flavor, self.adapter))

    def test_base_passes_rules_and_schemas(self):
        docs = base_render()
        self.assertEqual(self.problems(docs), "")
        for doc in docs:
            self.assertEqual(check_manifests.schema_problems(doc, VERSIONS)[0], [], doc["kind"])

    def test_grace_period_shorter_than_drain(self):
        docs = base_render()
        kind(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
        self.assertIn(
            "terminationGracePeriodSeconds 30 must exceed preStop 5s + drain_timeout_s 30s",
            self.problems(docs),
        )

    def test_drain_timeout_read_from_config(self):
        docs = base_render()
        cm = kind(docs, "ConfigMap")
        cm["data"]["config.toml"] = cm["data"]["config.toml"].replace(
            "drain_timeout_s = 30", "drain_timeout_s = 60"
        )
        self.assertIn("drain_timeout_s 60s", self.problems(docs))

    def test_readiness_on_health(self):
        docs = base_render()
        container(docs)["readinessProbe"]["httpGet"]["path"] = "/health"
        self.assertIn("readinessProbe must GET /ready", self.problems(docs))

    def test_probe_on_unknown_port(self):
        docs = base_render()
        container(docs)["livenessProbe"]["httpGet"]["port"] = "metrics"
        self.assertIn("livenessProbe port 'metrics' is not a container port", self.problems(docs))

    def test_service_selector_mismatch(self):
        docs = base_render()
        kind(docs, "Service")["spec"]["selector"]["app.kubernetes.io/name"] = "grian"
        self.assertIn("Service selector", self.problems(docs))

    def test_service_monitor_wrong_port(self):
        docs = base_render()
        kind(docs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] = "metrics"
        self.assertIn("endpoint port 'metrics' is not a Service port", self.problems(docs))

    def test_hpa_metric_must_be_served_gauge(self):
        docs = base_render()
        kind(docs, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"] = (
            "grain_request_success_total"
        )
        problems = self.problems(docs)
        self.assertIn("not a Grain gauge", problems)
        self.assertIn("not served by the prometheus-adapter rules", problems)

    def test_replicas_fight_the_hpa(self):
        docs = base_render()
        kind(docs, "Deployment")["spec"]["replicas"] = 2
        self.assertIn("HPA owns the replica count", self.problems(docs))

    def test_missing_secret(self):
        docs = [d for d in base_render() if d["kind"] != "Secret"]
        self.assertIn("reads Secret grain-api-keys/GRAIN_API_KEYS, absent", self.problems(docs))

    def test_gpu_flavor_needs_gpu(self):
        problems = self.problems(base_render(), "gpu")
        self.assertIn("limits lack nvidia.com/gpu", problems)
        self.assertIn("not the CUDA build", problems)

    def test_cpu_flavor_rejects_gpu(self):
        docs = base_render()
        container(docs)["resources"]["limits"]["nvidia.com/gpu"] = 1
        self.assertIn("cpu render: container asks for nvidia.com/gpu", self.problems(docs))

    def test_strict_schema_rejects_unknown_field(self):
        dep = copy.deepcopy(kind(base_render(), "Deployment"))
        dep["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
        problems = check_manifests.schema_problems(dep, VERSIONS)[0]
        self.assertEqual(len(problems), 2)
        self.assertIn("'livenesProbe' was unexpected", problems[0])

    def test_service_monitor_schema(self):
        sm = copy.deepcopy(kind(base_render(), "ServiceMonitor"))
        sm["spec"]["endpoint"] = sm["spec"].pop("endpoints")
        sm_bad_interval = copy.deepcopy(kind(base_render(), "ServiceMonitor"))
        sm_bad_interval["spec"]["endpoints"][0]["interval"] = "15 sec"
        self.assertIn(
            "'endpoints' is a required property", "\n".join(check_manifests.schema_problems(sm, VERSIONS)[0])
        )
        self.assertIn(
            "spec.endpoints.0.interval",
            "\n".join(check_manifests.schema_problems(sm_bad_interval, VERSIONS)[0]),
        )


class AdapterTests(unittest.TestCase):
    def values(self) -> dict:
        return yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())

    def test_real_rules(self):
        self.assertEqual(k8s_rules.adapter_metrics(self.values()), ({"grain_num_requests_waiting"}, []))

    def test_counter_rejected(self):
        values = self.values()
        values["rules"]["custom"][0]["seriesQuery"] = 'grain_request_success_total{namespace!="",pod!=""}'
        self.assertIn("the HPA needs a gauge", "\n".join(k8s_rules.adapter_metrics(values)[1]))


class RulesTests(unittest.TestCase):
    def alerts(self) -> dict:
        return yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())

    def test_real_alerts_pass(self):
        self.assertEqual(check_rules.check(self.alerts())[0], [])

    def test_foreign_metric_and_missing_alert(self):
        doc = self.alerts()
        rules = doc["groups"][0]["rules"]
        rules[:] = [r for r in rules if r["alert"] != "GrainKvCacheNearFull"]
        rules[0]["expr"] = "rate(vllm:num_requests_waiting[5m]) > 1"
        problems = "\n".join(check_rules.check(doc)[0])
        self.assertIn("no alert GrainKvCacheNearFull", problems)
        self.assertIn("uses vllm:num_requests_waiting", problems)

    def test_alert_without_for(self):
        doc = self.alerts()
        del doc["groups"][0]["rules"][0]["for"]
        self.assertIn("no `for` duration", "\n".join(check_rules.check(doc)[0]))


class ComposeTests(unittest.TestCase):
    def check_mutated(self, mutate) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "docker").mkdir()
            (root / "deploy").symlink_to(DEPLOY)
            compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
            mutate(compose)
            path = root / "docker" / "compose.yaml"
            path.write_text(yaml.safe_dump(compose))
            return "\n".join(check_compose.check(path))

    def test_real_compose_passes(self):
        self.assertEqual(self.check_mutated(lambda c: None), "")

    def test_short_grace_period(self):
        def mutate(c):
            c["services"]["grain"]["stop_grace_period"] = "20s"

        self.assertIn("stop_grace_period must exceed", self.check_mutated(mutate))

    def test_missing_rule_mount_and_dashboard(self):
        def mutate(c):
            c["services"]["prometheus"]["volumes"] = [
                v for v in c["services"]["prometheus"]["volumes"] if "alerts" not in v
            ]
            c["services"]["grafana"]["volumes"] = [
                v for v in c["services"]["grafana"]["volumes"] if "grain.json" not in v
            ]

        problems = self.check_mutated(mutate)
        self.assertIn("rule file alerts.yml is not mounted", problems)
        self.assertIn("where no dashboard is mounted", problems)


if __name__ == "__main__":
    unittest.main()
