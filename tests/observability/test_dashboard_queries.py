"""deploy/grafana/dashboard.py: Grafana's variable expansion and legends, without any server.

Whether the expanded queries are valid PromQL with data is `test_prometheus.py`'s job.
"""

from __future__ import annotations

import pytest

import dashboard


def test_expand_replaces_grafana_variables():
    expr = 'sum(rate(grain_x_total{job=~"$job", instance=~"${instance}"}[$__rate_interval])) / $__range'
    assert (
        dashboard.expand(expr, "1m", "3h") == 'sum(rate(grain_x_total{job=~".*", instance=~".*"}[1m])) / 3h'
    )
    pinned = dashboard.expand(expr, "1m", "3h", {"job": "grain"})
    assert 'job=~"grain"' in pinned and 'instance=~".*"' in pinned


def test_expand_refuses_unknown_variables():
    with pytest.raises(ValueError, match="unexpanded"):
        dashboard.expand('grain_x{model="$model"}', "1m", "1h")


def test_legend_follows_grafana_templates():
    labels = {"source": "router", "granularity": "144"}
    assert dashboard.legend("{{source}}: {{ granularity }}", labels) == "router: 144"
    assert dashboard.legend("", labels) == "granularity=144, source=router"
    assert dashboard.legend("", {}) == "value"


def test_every_panel_query_expands_and_panels_tile_the_grid():
    panels = dashboard.load()
    queries = [t.expr for p in panels for t in p.targets]
    assert len(queries) >= 20
    for expr in queries:
        assert "$" not in dashboard.expand(expr, "1m", "1h")
    for p in panels:
        assert 0 <= p.x and p.x + p.w <= 24, p
    # No two panels overlap on Grafana's 24-column grid (the preview draws them where they say).
    cells = {}
    for p in panels:
        for y in range(p.y, p.y + p.h):
            for x in range(p.x, p.x + p.w):
                assert (x, y) not in cells, f"{p.title} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p.title
