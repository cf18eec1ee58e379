"""The router's time per image on an image chat's first and second turns, against a running server:

  .venv-e2e/bin/python benchmarks/multiturn_router.py http://127.0.0.1:8000 6

Each of N conversations sends a fresh 640x480 PNG at granularity auto with "Describe the image.",
then the second turn: the same image, the answer and a new question. The second turn's image comes
from the encoder cache, and the router reuses its visual part (docs/architecture.md, "Router
cost"). Reads grain_router_duration_seconds from /metrics before and after each turn, and times
each answer's first token (median per turn). Needs the `openai` package (the e2e venv); standard
library otherwise.
"""
import re, statistics, sys, time, urllib.request

import openai
from png_data_url import png

url, n = sys.argv[1], int(sys.argv[2])
client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
model = client.models.list().data[0].id


def router():
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    s = float(re.search(r"^grain_router_duration_seconds_sum\s+(\S+)", text, re.M).group(1))
    c = float(re.search(r"^grain_router_duration_seconds_count\s+(\S+)", text, re.M).group(1))
    return s, c


def ask(messages):
    """The answer and the time to its first token (streamed)."""
    t0, first, text = time.perf_counter(), None, ""
    for c in client.chat.completions.create(model=model, messages=messages, max_tokens=8,
                                            temperature=0, stream=True,
                                            extra_body={"granularity": "auto"}):
        if c.choices and c.choices[0].delta.content:
            first = first or time.perf_counter() - t0
            text += c.choices[0].delta.content
    return text, first


imgs = [png(s + 3) for s in range(n)]
first = [[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": u}},
                                        {"type": "text", "text": "Describe the image."}]}] for u in imgs]
s0, c0 = router()
answers = [ask(m) for m in first]
s1, c1 = router()
second = [ask(m + [{"role": "assistant", "content": a}, {"role": "user", "content": "What colour is it?"}])
          for m, (a, _) in zip(first, answers)]
s2, c2 = router()
ttft = lambda turn: 1e3 * statistics.median(t for _, t in turn if t is not None)
print(f"turn 1: {c1 - c0:.0f} router calls, {1e3 * (s1 - s0) / (c1 - c0):.2f} ms each, TTFT p50 "
      f"{ttft(answers):.0f} ms; turn 2: {c2 - c1:.0f} calls, {1e3 * (s2 - s1) / (c2 - c1):.2f} ms "
      f"each, TTFT p50 {ttft(second):.0f} ms")
