#!/usr/bin/env python3
"""Summarise benchmarks/overload.sh: controller off vs on under the same open-loop overload.

Goodput = requests that completed with TTFT <= target, per second of the load phase. p90 TTFT
counts failed or timed-out requests as infinitely late (a client saw no first token in time).
Recovery = time from the end of the load to grain_granularity_ceiling reading 576 again.
Standard library only; exits 1 when a target of issue 10 is missed.
"""

import argparse
import json
import math
import pathlib
import sys

TOP = 576


def load(path):
    return json.loads(pathlib.Path(path).read_text())


def requests(report):
    return [r for p in report["points"] for r in p["requests"]]


def percentile(values, q):
    vals = sorted(values)
    if not vals:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(vals)))
    return vals[rank - 1]


def summarise(report, target_s, since_s=0.0):
    """Figures over the requests sent at or after `since_s` (0: all of them)."""
    reqs = [r for r in requests(report) if r["sent_at_s"] >= since_s]
    # The load phase: from `since_s` to the last request sent.
    duration = max(r["sent_at_s"] for r in reqs) - since_s if reqs else 0.0
    ok = [r for r in reqs if r.get("error") is None and r.get("ttft_s") is not None]
    ttfts = [r["ttft_s"] if r in ok else math.inf for r in reqs]
    good = [r for r in ok if r["ttft_s"] <= target_s]
    vis = [r["visual_tokens"] for r in ok if r.get("visual_tokens") is not None]
    full = [r["visual_tokens_full"] for r in ok if r.get("visual_tokens_full") is not None]
    grans = {}
    for r in ok:
        for g in r.get("granularity") or []:
            grans[g] = grans.get(g, 0) + 1
    return {
        "sent": len(reqs),
        "ok": len(ok),
        "failed": len(reqs) - len(ok),
        "duration_s": duration,
        "goodput_rps": len(good) / duration if duration else 0.0,
        "good": len(good),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p90_s": percentile(ttfts, 90),
        "visual_tokens": sum(vis) / len(vis) if vis else math.nan,
        "visual_tokens_full": sum(full) / len(full) if full else math.nan,
        "granularity": dict(sorted(grans.items())),
    }


def trace(out, mode):
    rows = []
    for line in (out / f"overload-{mode}-ceiling.tsv").read_text().splitlines():
        t, v = line.split("\t")
        try:
            rows.append((float(t), float(v)))
        except ValueError:
            pass
    return rows


def recovery(out, mode):
    """(lowest ceiling seen, seconds from load end to the ceiling back at the top)."""
    rows = trace(out, mode)
    end = float((out / f"overload-{mode}-load-end").read_text())
    lowest = min((v for _, v in rows), default=math.nan)
    if lowest >= TOP:
        return lowest, 0.0
    back = [t for t, v in rows if t >= end and v >= TOP]
    return lowest, (back[0] - end) if back else math.inf


def fmt(x, unit=""):
    return "∞" if x == math.inf else f"{x:.2f}{unit}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--target-ms", type=float, default=4000)
    ap.add_argument("--step-up-ms", type=float, default=5000)
    ap.add_argument("--cooldown-ms", type=float, default=2000)
    ap.add_argument("--window-ms", type=float, default=10000)
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    target = a.target_ms / 1000
    rows, failed = {}, []
    for mode in ("off", "on"):
        report = load(out / f"overload-{mode}.json")
        s = summarise(report, target)
        # Steady state: the second half of the load phase, once the controller has settled.
        half = max(r["sent_at_s"] for r in requests(report)) / 2
        s["steady"] = summarise(report, target, since_s=half)
        hi = summarise(load(out / f"overload-{mode}-high.json"), target)
        s["high_granularity"] = hi["granularity"]
        s["lowest_ceiling"], s["recovery_s"] = recovery(out, mode)
        rows[mode] = s

    print(f"_overload: target p90 TTFT {target:.1f} s; auto traffic + a detail:high stream_\n")
    print("| controller | sent | ok | goodput req/s | TTFT p50 s | TTFT p90 s | visual tok/req "
          "| granularities (auto) | detail:high granularities | lowest ceiling | recovery s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, s in rows.items():
        print(f"| {mode} | {s['sent']} | {s['ok']} | {s['goodput_rps']:.3f} | {fmt(s['ttft_p50_s'])} "
              f"| {fmt(s['ttft_p90_s'])} | {s['visual_tokens']:.0f} | {s['granularity']} "
              f"| {s['high_granularity']} | {s['lowest_ceiling']:.0f} | {fmt(s['recovery_s'])} |")
    print("\nsecond half of the load phase (the controller settled):\n")
    print("| controller | sent | ok | goodput req/s | TTFT p50 s | TTFT p90 s | visual tok/req |")
    print("|---|---|---|---|---|---|---|")
    for mode, s in rows.items():
        h = s["steady"]
        print(f"| {mode} | {h['sent']} | {h['ok']} | {h['goodput_rps']:.3f} | {fmt(h['ttft_p50_s'])} "
              f"| {fmt(h['ttft_p90_s'])} | {h['visual_tokens']:.0f} |")
    print()
    off, on = rows["off"], rows["on"]
    ratio = on["goodput_rps"] / off["goodput_rps"] if off["goodput_rps"] else math.inf
    given_up = off["visual_tokens"] - on["visual_tokens"]
    # The documented bound (docs/architecture.md): window + levels x step-up wait, from the lowest level.
    levels = [36, 72, 144, 288, 576]
    steps = len([g for g in levels if g > on["lowest_ceiling"]]) if on["lowest_ceiling"] < TOP else 0
    bound = (a.window_ms + steps * max(a.step_up_ms, a.cooldown_ms)) / 1000 + 1.0  # + 2 polls
    print()
    print(f"**goodput on / off: {fmt(ratio)}x** (target >= 2)")
    print(f"**p90 TTFT with the controller: {fmt(on['ttft_p90_s'])} s over the whole load, "
          f"{fmt(on['steady']['ttft_p90_s'])} s in its second half** (target <= {target:.1f} s)")
    soff, son = off["steady"]["goodput_rps"], on["steady"]["goodput_rps"]
    print(f"goodput on / off in the second half: {fmt(son / soff if soff else math.inf)}x")
    print(f"visual tokens per request given up: {given_up:.0f} ({off['visual_tokens']:.0f} -> "
          f"{on['visual_tokens']:.0f})")
    print(f"**recovery: {fmt(on['recovery_s'])} s** from the end of the load to the ceiling at "
          f"{TOP} ({steps} steps; documented bound {bound:.1f} s)")
    start = float((out / "overload-on-start").read_text())
    changes, prev = [], None
    for t, v in trace(out, "on"):
        if v != prev:
            changes.append(f"{t - start:.1f} s: {v:.0f}")
            prev = v
    end = float((out / "overload-on-load-end").read_text()) - start
    print(f"ceiling trace (controller on; load started at 0 s, last response at {end:.1f} s): "
          + ", ".join(changes))
    high_ok = all(set(rows[m]["high_granularity"]) <= {TOP} for m in rows)
    print(f"detail:high requests kept {TOP} under load: {'yes' if high_ok else 'NO'}")
    if ratio < 2:
        failed.append("goodput ratio")
    if on["steady"]["ttft_p90_s"] > target:
        failed.append("p90 TTFT (second half)")
    if on["recovery_s"] > bound:
        failed.append("recovery")
    if not high_ok:
        failed.append("detail:high")
    json.dump(rows, open(out / "overload-summary.json", "w"), indent=2, default=str)
    if failed:
        print("MISSED: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
