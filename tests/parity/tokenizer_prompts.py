"""Reference renders of chat templates and LLaVA-style prompt ids for grain-tokenizer's tests.

Writes tests/fixtures/tokenizer-prompts/cases.json with two lists:

  templates  Jinja chat templates rendered by transformers' own chat-template renderer
             (`transformers.utils.chat_template_utils.render_jinja_template`), i.e. Jinja2 with
             trim_blocks, lstrip_blocks, loopcontrols, the `generation` tag, transformers' `tojson`
             and `raise_exception`. Each case records the messages in the form the template is
             given (string content, or a list of {"type": ...} parts) and either the rendered text
             or the exception message.
  vicuna     Conversations in LLaVA's `conv_vicuna_v1` format and the ids that LLaVA's
             `tokenizer_image_token` gives for them with the slow SentencePiece tokenizer of
             tests/fixtures/tokenizer (image placeholder id -200).

It also writes tests/fixtures/tokenizer-prompts/nonlegacy/: the same tokenizer.model converted with
`legacy=False` (transformers 4's LlamaConverter: Metaspace pre-tokenizer that prefixes "\u2581" only at
the start of the text, no normalizer), as tokenizer.json + tokenizer_config.json, and cases.json with
its ids for the texts of tests/fixtures/tokenizer/tokenizer_cases.json plus prompt-like texts.

Run with the parity venv: `.venv-parity/bin/python tests/parity/tokenizer_prompts.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "tokenizer"
OUT = ROOT / "tests" / "fixtures" / "tokenizer-prompts" / "cases.json"
BOS, EOS = "<s>", "</s>"
IMAGE_TOKEN_INDEX = -200

# Templates written for these tests in the styles found on the Hub. They exercise what HF templates
# rely on: whitespace control, trim_blocks/lstrip_blocks, Python string methods, namespace, loop
# variables, loop controls, raise_exception, tojson, selectattr over typed content parts and the
# `generation` tag.
TEMPLATES = {
    # LLaVA-NeXT (vicuna) style: typed parts, images first, generation tag around assistant text.
    "llava_parts": (
        "{% for message in messages %}"
        "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
        "{% if message['role'] != 'assistant' %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}"
        "{% else %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' ' }}{% endgeneration %}{% endfor %}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}",
        "parts",
    ),
    # LLaMA-2 chat style: system folded into the first user turn, alternation enforced.
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}"
        "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
        "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
        "{% endfor %}",
        "string",
    ),
    # ChatML with block tags on their own lines: trim_blocks and lstrip_blocks decide the newlines.
    "chatml_blocks": (
        "{% for message in messages %}\n"
        "    {% if loop.first and message['role'] != 'system' %}\n"
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "    {% endif %}\n"
        "<|im_start|>{{ message['role'] }}\n{{ message['content'] | trim }}<|im_end|>\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n"
        "<|im_start|>assistant\n"
        "{% endif %}\n",
        "string",
    ),
    # Namespace, loop controls, string methods and tojson.
    "methods": (
        "{%- set ns = namespace(n=0) -%}"
        "{%- for message in messages -%}"
        "{%- if message['content'].startswith('STOP') %}{% break %}{% endif -%}"
        "{%- if message['role'] == 'system' %}{% continue %}{% endif -%}"
        "{%- set ns.n = ns.n + 1 -%}"
        "[{{ ns.n }}|{{ message['role'] | upper }}|{{ message['content'].lstrip().replace('  ', ' ').title() }}"
        "|{{ message['content'].split(' ') | length }}|{{ message | tojson }}]\n"
        "{%- endfor -%}"
        "{%- if tools is not none %}TOOLS{% endif -%}"
        "{{ bos_token }}{{ eos_token }}",
        "string",
    ),
}

CONVERSATIONS = {
    "one_user": [{"role": "user", "content": "What is shown in this image?"}],
    "system_and_turns": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": " Hi  there "},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Describe the \"picture\" <ok>\n\tplease."},
    ],
    "not_alternating": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ],
    "stop_early": [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "STOP here"},
        {"role": "user", "content": "never rendered"},
    ],
}

IMAGE_CONVERSATIONS = {
    "image_then_text": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]},
    ],
    "two_images_two_turns": [
        {"role": "user", "content": [{"type": "text", "text": "Compare them."}, {"type": "image"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The first is red."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the second?"}]},
    ],
}


def as_parts(messages):
    return [
        {**m, "content": m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]}
        for m in messages
    ]


def render(template: str, messages, add_generation_prompt: bool) -> dict:
    try:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            bos_token=BOS,
            eos_token=EOS,
        )
        return {"rendered": rendered[0]}
    except Exception as e:  # the tests check the error kind and message
        return {"error": type(e).__name__, "message": str(e)}


def template_cases() -> list[dict]:
    cases = []
    for name, (template, form) in TEMPLATES.items():
        convs = dict(CONVERSATIONS)
        if form == "parts":
            convs = {k: as_parts(v) for k, v in convs.items()} | IMAGE_CONVERSATIONS
        for conv_name, messages in convs.items():
            for add_generation_prompt in (False, True):
                case = {
                    "template": name,
                    "conversation": conv_name,
                    "add_generation_prompt": add_generation_prompt,
                    "messages": messages,
                }
                case.update(render(template, messages, add_generation_prompt))
                cases.append(case)
    return cases


# LLaVA's vicuna_v1 conversation (conversation.py: SeparatorStyle.TWO, sep " ", sep2 "</s>").
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def vicuna_prompt(system: str, turns: list[tuple[str, str | None]]) -> str:
    """conversation.py's get_prompt for SeparatorStyle.TWO, written out."""
    seps = [" ", "</s>"]
    out = system + seps[0]
    for i, (role, message) in enumerate(turns):
        out += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
    return out


def llava_tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """LLaVA's mm_utils.tokenizer_image_token: each chunk around <image> is tokenized on its own (with
    BOS, as LlamaTokenizer adds it), the BOS of every chunk is dropped, one BOS leads and -200 marks
    each image."""

    def tokenize(text):  # LlamaTokenizer(text).input_ids with add_bos_token=True
        return [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False).input_ids

    chunks = [tokenize(c) for c in prompt.split("<image>")]
    ids = [chunks[0][0]]
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[1:])
    return ids


def vicuna_cases() -> list[dict]:
    tokenizer = SentencePieceBackend(
        vocab_file=str(TOKENIZER_DIR / "tokenizer.model"), legacy=True, bos_token=BOS, eos_token=EOS, unk_token="<unk>"
    )
    question = "What is shown in this image?"
    convs = {
        # The first user turn carries the image: "<image>\n" + question (LLaVA's eval scripts).
        "one_turn_image": (
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            VICUNA_SYSTEM,
            [("USER", "<image>\n" + question), ("ASSISTANT", None)],
        ),
        "two_turns_image": (
            [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
                {"role": "user", "content": [{"type": "text", "text": "Where is it?"}]},
            ],
            VICUNA_SYSTEM,
            [
                ("USER", "<image>\n" + question),
                ("ASSISTANT", "A red square."),
                ("USER", "Where is it?"),
                ("ASSISTANT", None),
            ],
        ),
        "system_override_two_images": (
            [
                {"role": "system", "content": [{"type": "text", "text": "Answer in one word."}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]},
            ],
            "Answer in one word.",
            [("USER", "<image>\n<image>\nSame?"), ("ASSISTANT", None)],
        ),
    }
    cases = []
    for name, (messages, system, turns) in convs.items():
        prompt = vicuna_prompt(system, turns)
        cases.append(
            {
                "name": name,
                "messages": messages,
                "add_generation_prompt": True,
                "prompt": prompt,
                "prompt_ids": llava_tokenizer_image_token(prompt, tokenizer),
            }
        )
    return cases


def write_nonlegacy(out_dir: Path) -> None:
    """Convert the fixture model with legacy=False, the way transformers 4 did for LlamaTokenizerFast."""
    from tokenizers import AddedToken, processors
    from transformers.convert_slow_tokenizer import LlamaConverter
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    class ScoreOrderedExtractor(SentencePieceExtractor):
        # transformers 5's converter expects transformers 4's extractor signature: (vocab, merges)
        # ranked by piece score (see make_tokenizer.py).
        def extract(self, vocab_scores=None):
            vocab, _, merges = super().extract(vocab_scores)
            return vocab, merges

    class Converter(LlamaConverter):
        SpmExtractor = ScoreOrderedExtractor

    slow = SentencePieceBackend(
        vocab_file=str(TOKENIZER_DIR / "tokenizer.model"), legacy=False, bos_token=BOS, eos_token=EOS, unk_token="<unk>"
    )
    slow.add_prefix_space = True
    fast = Converter(slow).converted()
    fast.add_special_tokens([AddedToken("<unk>", normalized=False, special=True)])
    fast.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, fast.token_to_id(BOS))]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save(str(out_dir / "tokenizer.json"), pretty=True)
    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["legacy"] = False
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    texts = [c["text"] for c in json.loads((TOKENIZER_DIR / "tokenizer_cases.json").read_text(encoding="utf-8"))["cases"]]
    texts += ["A red square.</s>USER: Where is it? ASSISTANT:", "USER: <s> hi</s> there", "\nWhat is it?"]
    cases = [{"text": t, "ids": fast.encode(t, add_special_tokens=False).ids} for t in texts]
    (out_dir / "cases.json").write_text(json.dumps({"cases": cases}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    payload = {
        "note": "Generated by tests/parity/tokenizer_prompts.py; see its docstring.",
        "bos_token": BOS,
        "eos_token": EOS,
        "image_token_index": IMAGE_TOKEN_INDEX,
        "templates": {name: {"source": src, "content_format": form} for name, (src, form) in TEMPLATES.items()},
        "template_cases": template_cases(),
        "vicuna_cases": vicuna_cases(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_nonlegacy(OUT.parent / "nonlegacy")
    OUT.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(payload['template_cases'])} template cases, {len(payload['vicuna_cases'])} vicuna cases")


if __name__ == "__main__":
    main()
