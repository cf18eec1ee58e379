"""Cross-object rules for one rendered Grain release (kustomize overlay or Helm values set).

Schemas check each object alone; these rules check that the objects fit together and keep
Grain's operational contract: the Service and ServiceMonitor find the pods, probes hit the
right endpoints, the grace period outlasts preStop + drain, the HPA's metric is one the
adapter serves, and CPU renders carry no GPU while GPU renders request one.
"""

from __future__ import annotations

import posixpath
import tomllib
from typing import Any

import promql

DEFAULT_DRAIN_TIMEOUT_S = 30  # server.drain_timeout_s when the config omits it
DEFAULT_GRACE_S = 30  # Kubernetes' default terminationGracePeriodSeconds
GPU = "nvidia.com/gpu"
# Startup budget (period x failureThreshold) a flavor needs before liveness may kill the pod.
MIN_STARTUP_S = {"cpu": 60, "gpu": 600}


def _get(obj: Any, *path: str | int, default: Any = None) -> Any:
    for key in path:
        try:
            obj = obj[key]
        except (KeyError, IndexError, TypeError):
            return default
    return obj


def _one(docs: list[dict], kind: str, problems: list[str]) -> dict | None:
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        problems.append(f"expected exactly one {kind}, found {len(found)}")
        return None
    return found[0]


def _port(container: dict, ref: Any) -> int | None:
    """Resolves a port name or number against a container's ports."""
    for port in container.get("ports", []):
        if ref in (port.get("name"), port.get("containerPort")):
            return port.get("containerPort")
    return None


def _pre_stop_seconds(container: dict) -> int:
    pre_stop = _get(container, "lifecycle", "preStop", default={})
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"].get("seconds", 0))
    command = _get(pre_stop, "exec", "command", default=[])
    if len(command) == 2 and posixpath.basename(command[0]) == "sleep":
        return int(command[1])
    return 0


def _config(docs: list[dict], pod: dict, container: dict, problems: list[str]) -> dict:
    """The parsed TOML file that `serve --config PATH` reads, found through the volume mounts."""
    args = container.get("args", [])
    if "--config" not in args or args.index("--config") + 1 >= len(args):
        problems.append("container args do not pass --config")
        return {}
    path = args[args.index("--config") + 1]
    mount = next(
        (m for m in container.get("volumeMounts", []) if m.get("mountPath") == posixpath.dirname(path)), None
    )
    volume = mount and next(
        (v for v in _get(pod, "volumes", default=[]) if v.get("name") == mount.get("name")), None
    )
    cm_name = _get(volume, "configMap", "name")
    cm = next(
        (d for d in docs if d.get("kind") == "ConfigMap" and _get(d, "metadata", "name") == cm_name), None
    )
    text = _get(cm, "data", posixpath.basename(path))
    if text is None:
        problems.append(f"--config {path} is not backed by a ConfigMap key in this render")
        return {}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        problems.append(f"ConfigMap {cm_name} {posixpath.basename(path)}: invalid TOML: {err}")
        return {}


def _check_deployment(docs: list[dict], dep: dict, flavor: str, problems: list[str]) -> dict | None:
    pod = _get(dep, "spec", "template", "spec", default={})
    containers = pod.get("containers", [])
    container = next((c for c in containers if c.get("name") == "grain"), None)
    if container is None:
        problems.append("Deployment has no container named grain")
        return None
    pod_labels = _get(dep, "spec", "template", "metadata", "labels", default={})
    selector = _get(dep, "spec", "selector", "matchLabels", default={})
    if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
        problems.append(f"Deployment selector {selector} does not match its pod labels {pod_labels}")

    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health"), ("startupProbe", None)):
        get = _get(container, probe, "httpGet")
        if get is None:
            problems.append(f"{probe}: missing or not an httpGet probe")
            continue
        if path and get.get("path") != path:
            problems.append(f"{probe} must GET {path}, not {get.get('path')}")
        if path is None and get.get("path") not in ("/ready", "/health"):
            problems.append(f"startupProbe must GET /ready or /health, not {get.get('path')}")
        if _port(container, get.get("port")) is None:
            problems.append(f"{probe} port {get.get('port')!r} is not a container port")
    startup = container.get("startupProbe", {})
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if budget < MIN_STARTUP_S[flavor]:
        problems.append(
            f"startupProbe allows {budget}s to load the model; "
            f"a {flavor} pod needs >= {MIN_STARTUP_S[flavor]}s"
        )

    config = _config(docs, pod, container, problems)
    server = config.get("server", {})
    drain = server.get("drain_timeout_s", DEFAULT_DRAIN_TIMEOUT_S)
    pre_stop = _pre_stop_seconds(container)
    grace = pod.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
    if pre_stop <= 0:
        problems.append("no preStop sleep: the pod gets SIGTERM while still in the Service endpoints")
    if grace <= pre_stop + drain:
        problems.append(
            f"terminationGracePeriodSeconds {grace} must exceed "
            f"preStop {pre_stop}s + drain_timeout_s {drain}s"
        )
    if "port" in server and _port(container, server["port"]) is None:
        problems.append(f"config server.port {server['port']} is not a container port")

    for env in container.get("env", []):
        ref = _get(env, "valueFrom", "secretKeyRef")
        if ref:
            secret = next(
                (
                    d
                    for d in docs
                    if d.get("kind") == "Secret" and _get(d, "metadata", "name") == ref.get("name")
                ),
                None,
            )
            keys = set(_get(secret, "data", default={}) or {}) | set(
                _get(secret, "stringData", default={}) or {}
            )
            if secret is None or ref.get("key") not in keys:
                problems.append(
                    f"env {env.get('name')} reads Secret {ref.get('name')}/{ref.get('key')}, "
                    "absent from this render"
                )

    if not (
        _get(pod, "securityContext", "runAsNonRoot") or _get(container, "securityContext", "runAsNonRoot")
    ):
        problems.append("pod does not set runAsNonRoot")
    if _get(container, "securityContext", "allowPrivilegeEscalation") is not False:
        problems.append("container does not set allowPrivilegeEscalation: false")

    limits = _get(container, "resources", "limits", default={}) or {}
    requests = _get(container, "resources", "requests", default={}) or {}
    image = container.get("image", "")
    if flavor == "gpu":
        if int(limits.get(GPU, 0)) < 1:
            problems.append(f"gpu render: container limits lack {GPU} >= 1")
        if GPU in requests and requests[GPU] != limits.get(GPU):
            problems.append(f"gpu render: {GPU} requests and limits differ")
        if "cuda" not in image:
            problems.append(f"gpu render: image {image} is not the CUDA build")
    else:
        if GPU in limits or GPU in requests:
            problems.append(f"cpu render: container asks for {GPU}")
        if "cuda" in image:
            problems.append(f"cpu render: image {image} is the CUDA build")
    return container


def _check_service(svc: dict, dep: dict, container: dict, problems: list[str]) -> None:
    pod_labels = _get(dep, "spec", "template", "metadata", "labels", default={})
    selector = _get(svc, "spec", "selector", default={})
    if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
        problems.append(f"Service selector {selector} matches no pod of the Deployment")
    for port in _get(svc, "spec", "ports", default=[]):
        if _port(container, port.get("targetPort", port.get("port"))) is None:
            problems.append(
                f"Service port {port.get('name')} targets {port.get('targetPort')!r}, not a container port"
            )


def _check_service_monitor(sm: dict, svc: dict, problems: list[str]) -> None:
    svc_labels = _get(svc, "metadata", "labels", default={})
    want = _get(sm, "spec", "selector", "matchLabels", default={})
    if not want or any(svc_labels.get(k) != v for k, v in want.items()):
        problems.append(f"ServiceMonitor selector {want} does not select the Service (labels {svc_labels})")
    names = {p.get("name") for p in _get(svc, "spec", "ports", default=[])}
    for endpoint in _get(sm, "spec", "endpoints", default=[]):
        if endpoint.get("port") not in names:
            problems.append(
                f"ServiceMonitor endpoint port {endpoint.get('port')!r} is not a Service port {sorted(names)}"
            )
        if endpoint.get("path") != "/metrics":
            problems.append(f"ServiceMonitor scrapes {endpoint.get('path')!r}, not /metrics")
    job_label = _get(sm, "spec", "jobLabel")
    if svc_labels.get(job_label) != "grain":
        problems.append(
            f'ServiceMonitor jobLabel {job_label!r} must give job="grain" (alerts.yml selects it)'
        )


def _check_hpa(hpa: dict, dep: dict, adapter_metrics: set[str] | None, problems: list[str]) -> None:
    target = _get(hpa, "spec", "scaleTargetRef", default={})
    if target.get("kind") != "Deployment" or target.get("name") != _get(dep, "metadata", "name"):
        problems.append(f"HPA scales {target}, not the Deployment {_get(dep, 'metadata', 'name')}")
    if "replicas" in dep.get("spec", {}):
        problems.append("Deployment sets spec.replicas while an HPA owns the replica count")
    if _get(hpa, "spec", "minReplicas", default=1) > _get(hpa, "spec", "maxReplicas", default=0):
        problems.append("HPA minReplicas exceeds maxReplicas")
    for metric in _get(hpa, "spec", "metrics", default=[]):
        name = _get(metric, "pods", "metric", "name")
        if metric.get("type") != "Pods" or name is None:
            continue
        found = promql.resolve(name)
        if found is None or found[1].kind != promql.GAUGE:
            problems.append(f"HPA scales on {name}, which is not a Grain gauge")
        if adapter_metrics is not None and name not in adapter_metrics:
            problems.append(
                f"HPA metric {name} is not served by the prometheus-adapter rules ({sorted(adapter_metrics)})"
            )


def check_render(docs: list[dict], flavor: str, adapter_metrics: set[str] | None) -> list[str]:
    """Problems with one rendered release; `flavor` is "cpu" or "gpu"."""
    problems: list[str] = []
    dep = _one(docs, "Deployment", problems)
    svc = _one(docs, "Service", problems)
    sm = _one(docs, "ServiceMonitor", problems)
    hpa = _one(docs, "HorizontalPodAutoscaler", problems)
    container = dep and _check_deployment(docs, dep, flavor, problems)
    if svc and dep and container:
        _check_service(svc, dep, container, problems)
    if sm and svc:
        _check_service_monitor(sm, svc, problems)
    if hpa and dep:
        _check_hpa(hpa, dep, adapter_metrics, problems)
    return problems


def adapter_metrics(values: dict) -> tuple[set[str], list[str]]:
    """Metric names the prometheus-adapter rules expose, and problems with those rules."""
    problems: list[str] = []
    exposed: set[str] = set()
    rules = _get(values, "rules", "custom", default=[]) or []
    if not rules:
        problems.append("prometheus-adapter values: no rules.custom")
    for rule in rules:
        query = rule.get("seriesQuery", "")
        problems.extend(f"adapter seriesQuery {query!r}: {p}" for p in promql.lint(query))
        for name in promql.metric_names(query):
            found = promql.resolve(name)
            if found and found[1].kind != promql.GAUGE:
                problems.append(f"adapter exposes {name}, a {found[1].kind}: the HPA needs a gauge")
        overrides = _get(rule, "resources", "overrides", default={})
        if {"namespace", "pod"} - set(overrides):
            problems.append("adapter rule must map the namespace and pod labels to resources")
        if "<<.LabelMatchers>>" not in rule.get("metricsQuery", "") or "<<.GroupBy>>" not in rule.get(
            "metricsQuery", ""
        ):
            problems.append("adapter metricsQuery must use <<.LabelMatchers>> and <<.GroupBy>>")
        exposed.add(_get(rule, "name", "as") or next(iter(promql.metric_names(query)), ""))
    return exposed, problems
