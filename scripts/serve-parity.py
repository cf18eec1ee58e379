#!/usr/bin/env python3
"""The server's engine on a device against the same engine on the CPU (step (e) of gpu-check.sh).

`grain check-device parity` compares single requests through the model API. This drives two
`grain serve` processes on one checkpoint, the CPU one and the device one (both f32), with the same
concurrent mix of requests, twice: images at several granularities (router, fixed, `detail`), two
images in one request, text only, a raw-prompt `/v1/completions`, `n` choices, streaming and
logprobs. The second round runs with the first round's blocks in the prefix cache.

It checks, for each request:
  - the prompt and visual token counts and the granularities are the same;
  - the greedy text is the same, or it first differs at a position where the CPU's two best
    tokens are within TIE of each other (a near tie that float rounding may flip, not a bug);
  - the logprobs of the tokens both sides generated agree within LOGPROB_TOL;
and, for each server, that every KV block is free once all requests ended
(`grain_kv_cache_usage_ratio` = 0), and on the device that round 2 hit the prefix cache.
A third server, the device in bf16 (its default), must answer every request (its text is not
compared: bf16 rounding changes greedy choices of a random-weight model).

Usage: serve-parity.py BIN MODEL DEVICE OUT_JSON   (stdlib only; exits 1 on a failed check)
"""
import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

LOGPROB_TOL = 2e-3  # f32 logits on the two devices agree to ~1e-4 of their range on tiny
TIE = 5e-3
MODEL_NAME = "parity"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def image_part(name, detail=None):
    with open(os.path.join(ROOT, "tests/fixtures/images", name + ".png"), "rb") as f:
        url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    part = {"type": "image_url", "image_url": {"url": url}}
    if detail:
        part["image_url"]["detail"] = detail
    return part


def chat(text, images=(), **extra):
    content = [{"type": "text", "text": text}] + list(images)
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 24,
            "temperature": 0, "logprobs": True, "top_logprobs": 2}
    body.update(extra)
    return "/v1/chat/completions", body


REQUESTS = {
    "router-672": chat("Describe the image.", [image_part("square672")]),
    "fixed36-wide": chat("What is on the left?", [image_part("wide1000x500")], granularity=36),
    "fixed144-tall-stream": chat("Count the objects.", [image_part("tall400x900")],
                                 granularity=144, stream=True,
                                 stream_options={"include_usage": True}),
    "two-images-576": chat("Compare the two pictures.",
                           [image_part("odd337x211"), image_part("rgba500x400")], granularity=576),
    "detail-low": chat("Is it dark?", [image_part("square672", "low")]),
    "text-only": chat("Write a short poem about the sea.", max_tokens=32),
    "n2-router-pole": chat("What is this?", [image_part("pole90x1000")], n=2),
    "completion": ("/v1/completions", {"prompt": "The capital of France is", "max_tokens": 24,
                                       "temperature": 0, "logprobs": 2}),
}


def post(base, path, body):
    body = dict(body, model=MODEL_NAME)
    req = urllib.request.Request(base + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        raw = r.read().decode()
        headers = dict(r.headers)
    if body.get("stream"):
        return from_stream(raw), headers
    return json.loads(raw), headers


def from_stream(raw):
    """Folds SSE chunks into the shape of a non-streamed chat answer."""
    choices, usage = {}, None
    for line in raw.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk.get("choices", []):
            acc = choices.setdefault(c["index"], {"index": c["index"], "text": "", "lp": []})
            acc["text"] += (c.get("delta") or {}).get("content") or ""
            acc["lp"] += ((c.get("logprobs") or {}).get("content")) or []
    return {"choices": [{"index": i, "message": {"content": a["text"]},
                         "logprobs": {"content": a["lp"]}} for i, a in sorted(choices.items())],
            "usage": usage}


def tokens(choice):
    """(token, logprob, [top alternatives' logprobs]) per generated token, chat or legacy shape."""
    lp = choice.get("logprobs") or {}
    if "content" in lp:
        return [(t["token"], t["logprob"], sorted((a["logprob"] for a in t["top_logprobs"]),
                                                  reverse=True)) for t in lp["content"] or []]
    return [(t, l, sorted(top.values(), reverse=True))
            for t, l, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"])]


def text(choice):
    return choice["message"]["content"] if "message" in choice else choice["text"]


def start(bin_, model, device, dtype, port, log):
    proc = subprocess.Popen([bin_, "serve", "--model", model, "--device", device, "--dtype", dtype,
                             "--port", str(port), "--max-n", "4", "--served-model-name", MODEL_NAME],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"{device}/{dtype} server exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(base + "/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{device}/{dtype} server not ready in 300 s")


def round_(base):
    """All requests at once; returns name -> (answer, headers) or name -> error string."""
    out = {}

    def one(name, path, body):
        try:
            out[name] = post(base, path, body)
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            detail = e.read().decode()[:300] if isinstance(e, urllib.error.HTTPError) else ""
            out[name] = f"{type(e).__name__}: {e} {detail}"

    threads = [threading.Thread(target=one, args=(n, p, b)) for n, (p, b) in REQUESTS.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def metric(base, name):
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def compare(name, ref, got):
    """Problems of `got` against the CPU's `ref` for one request (empty: they agree)."""
    if isinstance(got, str):
        return [f"{name}: {got}"]
    (a, ha), (b, hb) = ref, got
    problems = []
    ua, ub = a["usage"] or {}, b["usage"] or {}
    for key in ("prompt_tokens",):
        if ua.get(key) != ub.get(key):
            problems.append(f"{name}: {key} {ua.get(key)} vs {ub.get(key)}")
    da, db = ua.get("prompt_tokens_details") or {}, ub.get("prompt_tokens_details") or {}
    for key in ("visual_tokens", "granularity", "granularity_source"):
        if da.get(key) != db.get(key):
            problems.append(f"{name}: {key} {da.get(key)} vs {db.get(key)}")
    for ca, cb in zip(a["choices"], b["choices"]):
        ta, tb = tokens(ca), tokens(cb)
        for i, ((tok_a, lp_a, top_a), (tok_b, lp_b, _)) in enumerate(zip(ta, tb)):
            if tok_a != tok_b:
                gap = top_a[0] - top_a[1] if len(top_a) > 1 else float("inf")
                if gap > TIE:
                    problems.append(f"{name} choice {ca['index']}: token {i} {tok_a!r} vs {tok_b!r}"
                                    f" (CPU's top-2 gap {gap:.2e} > {TIE})")
                break  # after a tie the continuations are different requests
            if abs(lp_a - lp_b) > LOGPROB_TOL:
                problems.append(f"{name} choice {ca['index']}: token {i} logprob {lp_a:.5f} vs "
                                f"{lp_b:.5f}")
                break
        else:
            if text(ca) != text(cb):
                problems.append(f"{name} choice {ca['index']}: text {text(ca)!r} vs {text(cb)!r}")
    return problems


def main():
    bin_, model, device, out_json = sys.argv[1:5]
    out_dir = os.path.dirname(os.path.abspath(out_json))
    servers, problems = {}, []
    report = {"model": model, "device": device, "rounds": {}, "servers": {}}
    try:
        for key, (dev, dtype, port) in {"cpu": ("cpu", "f32", 18431),
                                        "device": (device, "f32", 18432),
                                        "device-bf16": (device, "bf16", 18433)}.items():
            log = open(os.path.join(out_dir, f"serve-parity-{key}.log"), "w")
            servers[key] = start(bin_, model, dev, dtype, port, log)
        results = {}
        for key, (_, base) in servers.items():
            for r in (1, 2):
                t = time.perf_counter()
                results[(key, r)] = round_(base)
                report["rounds"][f"{key}-{r}"] = {"seconds": round(time.perf_counter() - t, 3)}
        ref = results[("cpu", 1)]
        for name in REQUESTS:
            if isinstance(ref[name], str):
                problems.append(f"cpu {name}: {ref[name]}")
                continue
            for key, r in (("cpu", 2), ("device", 1), ("device", 2)):
                problems += [f"{key} round {r}: {p}" for p in compare(name, ref[name],
                                                                      results[(key, r)][name])]
            for r in (1, 2):
                got = results[("device-bf16", r)][name]
                if isinstance(got, str):
                    problems.append(f"device-bf16 round {r}: {name}: {got}")
                elif not (got[0]["usage"] or {}).get("completion_tokens"):
                    problems.append(f"device-bf16 round {r}: {name}: no completion tokens")
        for key, (_, base) in servers.items():
            used = metric(base, "grain_kv_cache_usage_ratio")
            cached = metric(base, "grain_prefix_cache_hit_tokens_total")
            report["servers"][key] = {"kv_cache_usage_ratio_after": used, "prefix_cache_hit_tokens": cached}
            if used != 0:
                problems.append(f"{key}: {used} of the KV cache still in use after every request")
            if not cached:
                problems.append(f"{key}: round 2 did not hit the prefix cache")
        report["texts"] = {name: {key: ([text(c) for c in results[(key, 1)][name][0]["choices"]]
                                        if not isinstance(results[(key, 1)][name], str) else None)
                                  for key in servers} for name in REQUESTS}
    except Exception as e:  # noqa: BLE001 - a server that does not start is a failed check
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    report["problems"] = problems
    report["pass"] = not problems
    json.dump(report, open(out_json, "w"), indent=1)
    for p in problems:
        print("FAIL", p)
    print(f"serve parity ({device} vs cpu, {len(REQUESTS)} requests x 2 rounds): "
          f"{'PASS' if not problems else 'FAIL'}")
    sys.exit(0 if not problems else 1)


if __name__ == "__main__":
    main()
