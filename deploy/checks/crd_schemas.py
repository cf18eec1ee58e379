"""JSON schemas for the custom resources we render, which the Kubernetes schemas do not cover.

kubernetes-validate bundles the built-in API only. The Prometheus Operator's ServiceMonitor
(monitoring.coreos.com/v1) is described here by hand from the operator's API reference: the
fields we use are typed and required, unknown fields at the spec and endpoint level are
rejected (the API server prunes them silently, so a typo would just vanish), and durations
follow Prometheus' duration syntax. It is a subset: fields we never render are only named.
"""

from __future__ import annotations

# Prometheus duration: 1h30m, 15s, 500ms, ... (the operator's `Duration` pattern).
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"

_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}

# Endpoint fields of the v1 API; only those we render are typed beyond "present".
_ENDPOINT_FIELDS = [
    "authorization",
    "basicAuth",
    "bearerTokenFile",
    "bearerTokenSecret",
    "enableHttp2",
    "filterRunning",
    "followRedirects",
    "honorLabels",
    "honorTimestamps",
    "metricRelabelings",
    "noProxy",
    "oauth2",
    "params",
    "proxyConnectHeader",
    "proxyFromEnvironment",
    "proxyUrl",
    "relabelings",
    "scheme",
    "scrapeProtocols",
    "tlsConfig",
    "trackTimestampsStaleness",
]
_SPEC_FIELDS = [
    "attachMetadata",
    "bodySizeLimit",
    "fallbackScrapeProtocol",
    "keepDroppedTargets",
    "labelLimit",
    "labelNameLengthLimit",
    "labelValueLengthLimit",
    "namespaceSelector",
    "nativeHistogramBucketLimit",
    "nativeHistogramMinBucketFactor",
    "podTargetLabels",
    "sampleLimit",
    "scrapeClass",
    "scrapeClassicHistograms",
    "scrapeProtocols",
    "selectorMechanism",
    "targetLabels",
    "targetLimit",
]

SERVICE_MONITOR_V1 = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": _LABEL_SELECTOR,
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            **{f: {} for f in _ENDPOINT_FIELDS},
                        },
                    },
                },
                **{f: {} for f in _SPEC_FIELDS},
            },
        },
    },
}

# (apiVersion, kind) -> schema
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_V1}
