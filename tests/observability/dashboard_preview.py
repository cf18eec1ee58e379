"""Makes docs/images/dashboard.png: a short traffic run scraped by a real Prometheus, rendered by
deploy/grafana/render_preview.py from the dashboard's own queries.

    python3 -m venv .venv-preview && .venv-preview/bin/pip install -r deploy/grafana/requirements-preview.txt
    cargo build -p grain
    .venv-preview/bin/python tests/observability/dashboard_preview.py --out docs/images/dashboard.png

The replica runs the embedded tiny model with a deliberately small batch (`--max-num-seqs 4`)
and KV cache, so that a few concurrent clients on a laptop CPU show queueing, KV pressure and
batching. Three phases, about three minutes in all:

1. light: one client, images at every `detail` and text;
2. busy: six clients, longer answers (queue, batch and KV usage rise);
3. cheap: mostly `detail: low` images (savings rise), plus a few bad requests (errors panel).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "deploy" / "grafana"))

import render_preview  # noqa: E402
from harness import Grain, Prometheus, http, image_messages, text_messages, workdir  # noqa: E402

SCRAPE_S = 1.0


def one_request(grain: Grain, rng: random.Random, mix: dict[str, float], max_tokens: int) -> None:
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    body: dict = {"model": grain.model, "max_tokens": rng.randint(max_tokens // 2, max_tokens)}
    if kind == "text":
        body["messages"] = text_messages(rng.choice(["Say hello.", "Tell me a long story.", "Count to ten."]))
    elif kind == "bad_model":
        body = {"model": "no-such-model", "messages": text_messages()}
    elif kind == "bad_image":
        body["messages"] = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}
                ],
            }
        ]
    else:
        size = rng.choice([(64, 48), (336, 336), (672, 500), (500, 1000)])
        # A few dozen distinct images: some repeat (encoder cache hits), most are new.
        text = rng.choice(["Describe the image.", "What is this?"])
        body["messages"] = image_messages(kind, *size, text=text, variant=rng.randrange(40))
    http("POST", f"{grain.url}/v1/chat/completions", body, timeout=600)


def phase(
    grain: Grain, seconds: float, clients: int, mix: dict[str, float], max_tokens: int, seed: int
) -> None:
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        rng = random.Random(seed * 100 + i)
        while time.monotonic() < stop:
            one_request(grain, rng, mix, max_tokens)
            time.sleep(rng.uniform(0.05, 0.4))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("docs/images/dashboard.png"))
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every phase's length")
    args = parser.parse_args()

    work = workdir("grain-preview-")
    with ExitStack() as processes:
        processes.callback(shutil.rmtree, work, ignore_errors=True)
        grain = Grain(work, args=["--max-num-seqs", "4", "--num-kv-blocks", "160"])
        processes.callback(grain.stop)
        prom = Prometheus(work, [f"127.0.0.1:{grain.port}"], interval_s=SCRAPE_S)
        processes.callback(prom.stop)
        time.sleep(10 * SCRAPE_S)  # an idle baseline
        start = time.time() - 8 * SCRAPE_S
        phase(grain, 50 * args.scale, 1, {"auto": 3, "low": 1, "high": 1, "text": 2}, 24, seed=1)
        phase(grain, 70 * args.scale, 6, {"auto": 3, "low": 1, "high": 2, "text": 3}, 160, seed=2)
        cheap = {"low": 6, "auto": 2, "text": 1, "bad_model": 0.3, "bad_image": 0.3}
        phase(grain, 50 * args.scale, 2, cheap, 24, seed=3)
        time.sleep(10 * SCRAPE_S)
        end = time.time()
        render_preview.main(
            ["--prometheus", prom.url, "--start", f"{start:.0f}", "--end", f"{end:.0f}", "--step", "2"]
            + ["--scrape-interval", f"{SCRAPE_S}", "--rate-interval", "15", "--out", str(args.out)]
            + ["--subtitle", "grain serve, tiny model, 3-minute synthetic load"]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
