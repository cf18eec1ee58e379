"""Markdown tables and the target ratios from `grain bench --json` (and hf_baseline.py) reports.

  python3 benchmarks/summarize.py granularity RESULT.json   # fixed 36 vs 576 (and other modes) at c=16
  python3 benchmarks/summarize.py batching RESULT.json      # tokens/s at each concurrency vs c=1
  python3 benchmarks/summarize.py hf GRAIN.json HF.json     # Grain vs transformers, same requests
  python3 benchmarks/summarize.py prefix ON.json OFF.json   # prefix caching on vs off

Standard library only. Exits 1 when a target is missed, so a script can tell.
"""

from __future__ import annotations

import json
import sys


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def header(report: dict) -> str:
    m = report["machine"]
    return (
        f"_{report.get('label', '')} — {report['started_at']} — {m.get('cpu_model') or 'unknown CPU'}, "
        f"{m['cpus']} CPUs ({m.get('hostname') or ''})_\n"
    )


def point(report: dict, mode: str, at: int) -> dict | None:
    for p in report["points"]:
        if p["mode"] == mode and p["load"]["value"] == at:
            return p
    return None


def ms(d: dict | None, key: str = "p50") -> str:
    return "-" if not d else f"{d[key] * 1e3:.0f}"


def num(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows: list[list[str]], head: list[str]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def verdict(name: str, value: float, target: str, ok: bool) -> str:
    return f"**{name}: {value:.2f}** (target {target}) — {'met' if ok else 'MISSED'}\n"


def granularity(path: str, at: int = 16) -> bool:
    r = load(path)
    rows = []
    for p in r["points"]:
        if p["load"]["value"] != at:
            continue
        s = p["summary"]
        solo = point(r, p["mode"], 1)
        rows.append([
            p["mode"], str(s["completed"]), num(s["mean_visual_tokens"], 0), num(s["mean_prompt_tokens"], 0),
            num(s["mean_completion_tokens"]), num(s["requests_per_s"], 3), num(s["output_tokens_per_s"]),
            ms(s["e2e_s"]), ms(s["ttft_s"]),
            num((p.get("server_prefill_s_per_request") or 0) * 1e3, 0) if p.get("server_prefill_s_per_request") else "-",
            ms(solo["summary"]["ttft_s"]) if solo else "-",
            num((solo.get("server_prefill_s_per_request") or 0) * 1e3, 0) if solo and solo.get("server_prefill_s_per_request") else "-",
        ])
    print(header(r))
    print(table(rows, [
        "mode", "ok", "visual tok/req", "prompt tok/req", "compl tok/req", "req/s", "out tok/s", f"e2e p50 ms (c={at})",
        f"TTFT p50 ms (c={at})", f"server prefill ms/req (c={at})", "TTFT p50 ms (c=1)", "server prefill ms/req (c=1)",
    ]))
    fine, coarse = point(r, "576", at), point(r, "36", at)
    if not (fine and coarse):
        print("(no fixed 36 and 576 points at this load: no ratio)")
        return True
    ratio = coarse["summary"]["requests_per_s"] / fine["summary"]["requests_per_s"]
    print(verdict(f"e2e throughput (requests/s) 36 vs 576 at c={at}", ratio, "> 1.5", ratio > 1.5))
    tok = coarse["summary"]["output_tokens_per_s"] / fine["summary"]["output_tokens_per_s"]
    print(f"output tokens/s 36 vs 576 at c={at}: {tok:.2f}x\n")
    return ratio > 1.5


def batching(path: str) -> bool:
    r = load(path)
    ok = True
    print(header(r))
    rows = []
    for p in r["points"]:
        base = next(q for q in r["points"] if q["mode"] == p["mode"])
        s, b = p["summary"], base["summary"]
        rows.append([
            p["mode"], f"c={p['load']['value']}", str(s["completed"]), num(s["mean_completion_tokens"]),
            num(s["output_tokens_per_s"]), f"{s['output_tokens_per_s'] / b['output_tokens_per_s']:.2f}x",
            ms(s["ttft_s"]), ms(s["itl_s"]), ms(s["e2e_s"]),
            num(p["server"]["mean_batch_size"], 1) if p.get("server") and p["server"].get("mean_batch_size") else "-",
        ])
    print(table(rows, ["mode", "load", "ok", "compl tok/req", "out tok/s", "vs c=1", "TTFT p50 ms", "ITL p50 ms", "e2e p50 ms", "mean batch"]))
    for mode in dict.fromkeys(p["mode"] for p in r["points"]):
        one, sixteen = point(r, mode, 1), point(r, mode, 16)
        if one and sixteen:
            ratio = sixteen["summary"]["output_tokens_per_s"] / one["summary"]["output_tokens_per_s"]
            ok &= ratio >= 6
            print(verdict(f"tokens/s c=16 vs c=1 ({mode})", ratio, ">= 6", ratio >= 6))
    return ok


def hf(grain_path: str, hf_path: str) -> bool:
    g, h = load(grain_path), load(hf_path)
    print(header(g))
    print(header(h))
    rows = []
    for label, rep, kind in ((g["label"] + " (Grain)", g, "concurrency"), ("transformers", h, "batch")):
        for p in rep["points"]:
            s = p["summary"]
            rows.append([
                label, f"{kind} {p['load']['value']}", str(s["completed"]), num(s["mean_prompt_tokens"], 0),
                num(s["mean_visual_tokens"], 0), num(s["mean_completion_tokens"]), num(s["output_tokens_per_s"], 2),
                num(s["requests_per_s"], 3), ms(s["ttft_s"]), ms(s["e2e_s"]),
            ])
    print(table(rows, ["server", "load", "ok", "prompt tok/req", "visual tok/req", "compl tok/req", "out tok/s", "req/s", "TTFT p50 ms", "e2e p50 ms"]))
    g8 = next(p for p in g["points"] if p["load"]["value"] == 8)
    g1 = next(p for p in g["points"] if p["load"]["value"] == 1)
    best = max(h["points"], key=lambda p: p["summary"]["output_tokens_per_s"])
    solo = next(p for p in h["points"] if p["load"]["value"] == 1)
    thr = g8["summary"]["output_tokens_per_s"] / best["summary"]["output_tokens_per_s"]
    lat = g1["summary"]["e2e_s"]["p50"] / solo["summary"]["e2e_s"]["p50"]
    print(verdict(f"Grain c=8 tokens/s over transformers' best (batch {best['load']['value']})", thr, ">= 3", thr >= 3))
    print(verdict("Grain solo e2e p50 / transformers solo e2e p50", lat, "<= 1", lat <= 1))
    same = g1["summary"]["mean_prompt_tokens"] == solo["summary"]["mean_prompt_tokens"]
    print(f"same prompt tokens per request on both sides: {'yes' if same else 'NO'} "
          f"({num(g1['summary']['mean_prompt_tokens'], 1)} vs {num(solo['summary']['mean_prompt_tokens'], 1)})\n")
    return thr >= 3 and lat <= 1


def prefix(on_path: str, off_path: str) -> bool:
    on, off = load(on_path), load(off_path)
    print(header(on))
    rows = []
    for rep in (on, off):
        for p in rep["points"]:
            s = p["summary"]
            rows.append([
                rep["label"], f"c={p['load']['value']}", str(s["completed"]), num(s["mean_prompt_tokens"]),
                num(s.get("mean_cached_tokens")), num(s["output_tokens_per_s"]), ms(s["ttft_s"]), ms(s["e2e_s"]),
                num(p["server_prefill_s_per_request"] * 1e3, 1) if p.get("server_prefill_s_per_request") else "-",
            ])
    print(table(rows, ["server", "load", "ok", "prompt tok/req", "cached tok/req", "out tok/s", "TTFT p50 ms",
                       "e2e p50 ms", "prefill ms/req"]))
    ratio = on["points"][0]["summary"]["output_tokens_per_s"] / off["points"][0]["summary"]["output_tokens_per_s"]
    print(f"**out tok/s, prefix caching on / off: {ratio:.2f}**\n")
    # No target: the gain depends on how much of each prompt is shared. Fails only if nothing ran.
    return all(r["points"][0]["summary"]["completed"] > 0 for r in (on, off))


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in ("granularity", "batching", "hf", "prefix"):
        sys.exit(__doc__)
    kind = sys.argv[1]
    ok = {"granularity": lambda: granularity(sys.argv[2]), "batching": lambda: batching(sys.argv[2]),
          "hf": lambda: hf(sys.argv[2], sys.argv[3]), "prefix": lambda: prefix(sys.argv[2], sys.argv[3])}[kind]()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
