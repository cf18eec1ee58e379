"""Wall time of text completions with `n` choices over a long prompt, against a running server.

  python3 benchmarks/n_choices.py http://127.0.0.1:8000 8

Four different ~870-token prompts one after another, `max_tokens` 8. With the prefix cache the
first choice computes the prompt and the others attach its KV blocks (`cached_tokens`); run it
against `grain serve --prefix-caching=false` for the comparison. Standard library only.
"""

import json
import sys
import time
import urllib.request

url, n = sys.argv[1], int(sys.argv[2])
model = json.load(urllib.request.urlopen(url + "/v1/models"))["data"][0]["id"]
times = []
for i in range(4):
    prompt = f"Request {i}. " + " ".join(f"word{j % 97}" for j in range(300))
    body = json.dumps(
        {"model": model, "prompt": prompt, "max_tokens": 8, "n": n, "temperature": 1, "seed": i}
    ).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"content-type": "application/json"})
    t = time.perf_counter()
    usage = json.load(urllib.request.urlopen(request))["usage"]
    times.append(time.perf_counter() - t)
print(
    f"n={n}: prompt {usage['prompt_tokens']} tokens, cached {usage['prompt_tokens_details']['cached_tokens']}, "
    f"wall {', '.join(f'{x * 1e3:.0f}' for x in times)} ms"
)
