"""Time to first token of an image chat's second turn, against a running server.

  .venv-e2e/bin/python benchmarks/multiturn_image.py http://127.0.0.1:8000 4

Each of N conversations sends a fresh 640x480 PNG at granularity 576 with "Describe the image.",
then the second turn: the same image and question, the answer, and a new question. With prefix
caching the second turn finds the system prompt, the image and the first question in the KV
cache. benchmarks/run.sh prefix runs it against a server with the cache on and one with it off.
Needs the `openai` package (the e2e venv); standard library otherwise.
"""
import statistics, sys, time
import openai
from png_data_url import png

url, n = sys.argv[1], int(sys.argv[2])
client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
model = client.models.list().data[0].id


def ttft(messages):
    t0 = time.perf_counter(); first = None; text = ""; usage = None
    for c in client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"granularity": 576}):
        if c.choices and c.choices[0].delta.content:
            first = first or time.perf_counter() - t0
            text += c.choices[0].delta.content
        if c.usage:
            usage = c.usage
    return first, text, usage

t1s, t2s, cached = [], [], []
for i in range(n):
    turn1 = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png(i + 1)}},
                                          {"type": "text", "text": "Describe the image."}]}]
    a, answer, _ = ttft(turn1)
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "What colour dominates?"}]
    b, _, u = ttft(turn2)
    t1s.append(a); t2s.append(b); cached.append(u.prompt_tokens_details.cached_tokens)
    print(f"conversation {i}: turn-1 TTFT {a*1e3:.0f} ms, turn-2 TTFT {b*1e3:.0f} ms, turn-2 prompt {u.prompt_tokens} cached {u.prompt_tokens_details.cached_tokens}")
print(f"median turn-1 TTFT {statistics.median(t1s)*1e3:.0f} ms, turn-2 {statistics.median(t2s)*1e3:.0f} ms")
