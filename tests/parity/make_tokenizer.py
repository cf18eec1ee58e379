"""Train a tiny LLaMA-style SentencePiece BPE tokenizer and record reference encodings.

Writes tests/fixtures/tokenizer/:
  tokenizer.model          SentencePiece model (the "slow" ground truth, like Vicuna's tokenizer.model)
  tokenizer.json           transformers' conversion of it (what a Rust `tokenizers` load reads)
  tokenizer_config.json    written by transformers' save_pretrained
  special_tokens_map.json  written here (transformers 5 no longer writes it)
  tokenizer_cases.json     per-case ids from sentencepiece itself and from the converted tokenizer

Everything is deterministic: the corpus is embedded below, training is single-threaded with no input
shuffling, and the trainer gets the corpus through an iterator so no file path ends up in the model.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
from pathlib import Path

import sentencepiece as spm

VOCAB_SIZE = 600

# Hand-written corpus. It covers the words of the vicuna_v1 prompt so the prompts used by the
# model fixtures tokenize into real merges rather than single characters.
CORPUS = """\
A chat between a curious user and an artificial intelligence assistant.
The assistant gives helpful, detailed, and polite answers to the user's questions.
USER: What is shown in this image? ASSISTANT: The image shows a red square on a blue background.
USER: Describe the picture in detail. ASSISTANT: There is a small green circle near the top left corner.
USER: How many shapes can you see? ASSISTANT: I can see three shapes: a square, a circle and a stripe.
The quick brown fox jumps over the lazy dog while the cat watches from the window.
A river runs through the valley, and the morning light shines on the water.
Every picture tells a story, and every story begins with a single line of text.
The model reads the image, turns it into tokens, and answers the question in plain words.
Small tests are fast tests; fast tests are run often, and tests that run often catch bugs early.
She sells sea shells by the sea shore, and the shells she sells are surely sea shells.
In the beginning the computer was slow, but the engineers made it faster every year.
Numbers matter: 1 2 3 4 5 6 7 8 9 0, 12, 345, 2024, 3.14159, 42%, $19.99, 7:30 pm, 1,000,000.
Punctuation too: commas, periods. Questions? Exclamations! Quotes "like this" and 'like that'.
Brackets (round), [square], {curly}, <angle>; slashes / and \\ backslashes; dashes - and _ underscores.
Email me at user@example.com or visit https://example.com/path?query=1&key=value#top.
Code: fn main() { let x = 1 + 2 * 3; println!("{}", x); } // a comment
Tabs\tseparate\tcolumns\tin\tthis\tline.
  Two leading spaces, and    four inner spaces, and a trailing space at the end. 
Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e na\u00efve r\u00e9sum\u00e9 fa\u00e7ade \u00fcber \u00e0 la carte.
\u4e2d\u6587 \u4e2d\u6587\u5b57 \u6587\u5b57
The weather today is warm and sunny, with a light wind from the west.
Tomorrow it may rain in the afternoon, so take an umbrella when you go out.
A good answer is short, correct and kind; a bad answer is long, wrong and rude.
Images can be tall or wide, large or small, bright or dark, simple or complex.
The grid of tiles covers the image, and each tile becomes a block of visual tokens.
When the user asks a question, the assistant looks at the picture and thinks before it answers.
Colors: red, orange, yellow, green, blue, indigo, violet, black, white, gray and brown.
Shapes: square, circle, triangle, rectangle, line, stripe, dot, star and heart.
Directions: left, right, up, down, top, bottom, center, middle, corner and edge.
What is this? This is a test. Where is it? It is here. Why? Because we wrote it.
It was the best of times, it was the worst of times, it was the age of wisdom.
All that glitters is not gold; all who wander are not lost.
"""

# Cases cover the behaviours a Rust reimplementation gets wrong first: dummy prefix, runs of spaces,
# whitespace-only input, digits split one by one, byte fallback for characters outside the vocab, and
# special-token text inside ordinary text.
CASES: list[tuple[str, str]] = [
    ("plain", "Hello world"),
    ("plain_sentence", "The quick brown fox jumps over the lazy dog."),
    ("prompt_words", "What is shown in this image?"),
    ("vicuna_system", "A chat between a curious user and an artificial intelligence assistant."),
    ("lowercase_single", "a"),
    ("single_space", " "),
    ("two_spaces", "  "),
    ("leading_space", " leading space"),
    ("leading_spaces", "   three leading spaces"),
    ("trailing_space", "trailing space "),
    ("trailing_spaces", "trailing spaces   "),
    ("inner_spaces", "many    inner     spaces"),
    ("newline", "line one\nline two"),
    ("newline_leading", "\nstarts with a newline"),
    ("newline_trailing", "ends with a newline\n"),
    ("newlines_multi", "a\n\n\nb"),
    ("crlf", "windows\r\nline"),
    ("tab", "tab\tseparated\tvalues"),
    ("digits", "1234567890"),
    ("digits_mixed", "room 101 has 3 chairs and 42 books, 3.14 and 1,000"),
    ("year", "In 2024 we shipped version 12.5."),
    ("punctuation", "Hi! How are you? Fine, thanks; really: yes..."),
    ("brackets", "(a) [b] {c} <d> \"e\" 'f'"),
    ("url", "https://example.com/a/b?c=d&e=f#g"),
    ("code", 'fn main() { println!("hi"); }'),
    ("accents_in_vocab", "Caf\u00e9 cr\u00e8me r\u00e9sum\u00e9"),
    ("accents_rare", "\u0141\u00f3d\u017a \u0111\u1ea1i h\u1ecdc"),
    ("cjk_in_corpus", "\u4e2d\u6587"),
    ("cjk_out_of_corpus", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8"),
    ("emoji", "I love \U0001f600 and \U0001f680!"),
    ("emoji_only", "\U0001f44d\U0001f3fd"),
    ("zero_width_joiner", "\U0001f469\u200d\U0001f4bb"),
    ("empty", ""),
    ("eos_inside", "Hello</s>world"),
    ("bos_inside", "<s> starts"),
    ("unk_text", "an <unk> token"),
    ("image_text", "before <image> after"),
    ("user_assistant", "USER: hi ASSISTANT: hello"),
    ("mixed_scripts", "abc\u0430\u0431\u0432\u4e2d\u6587123"),
    ("control_char", "bell\u0007char"),
    (
        "paragraph",
        (
            "The assistant looked at the picture for a long time. It saw a red square in the top left corner, "
            "a green circle near the middle, and a thin striped patch at the bottom right. When the user asked "
            'what was shown in the image, it answered: "Three shapes on a smooth gradient, 2 of them solid."\n'
            "Then it waited for the next question."
        ),
    ),
]


def train(out_model: Path) -> None:
    """Train the BPE model single-threaded; the result is byte-identical run to run."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        split_by_unicode_script=True,
        split_by_whitespace=True,
        split_by_number=True,
        allow_whitespace_only_pieces=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        unk_surface=" \u2047 ",
        max_sentencepiece_length=16,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        seed_sentencepiece_size=1000000,
        minloglevel=2,
    )
    out_model.write_bytes(model.getvalue())


BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def build_fast(model_path: Path):
    """Convert tokenizer.model to a `tokenizers.Tokenizer` with transformers' own LLaMA converter.

    transformers 5 has no separate slow/fast LlamaTokenizer any more (`LlamaTokenizerFast` is an alias
    of the tokenizers-backed `LlamaTokenizer`), and when it loads a bare tokenizer.model it builds a
    Metaspace pre-tokenizer that differs from sentencepiece on leading spaces and, unless
    `add_bos_token` is configured, adds no BOS. So we run the conversion that transformers 4's
    `LlamaTokenizerFast(from_slow=True, legacy=True)` ran: `convert_slow_tokenizer.LlamaConverter` on
    the slow sentencepiece tokenizer (transformers 5 `SentencePieceBackend`) with `legacy=True`, which
    gives the classic LLaMA/Vicuna tokenizer.json (normalizer Prepend("\u2581") + Replace(" ",
    "\u2581"), no pre-tokenizer, BPE with byte fallback), and we install the BOS template that
    LlamaTokenizerFast.update_post_processor installed. legacy=True is the Vicuna/LLaVA behaviour:
    every chunk of text between special tokens gets its own dummy-prefix "\u2581", as when the
    original LLaVA code tokenizes the chunks around <image> separately.
    """
    from tokenizers import AddedToken, processors
    from transformers.convert_slow_tokenizer import LlamaConverter
    from transformers.tokenization_utils_sentencepiece import (
        SentencePieceBackend,
        SentencePieceExtractor,
    )

    class ScoreOrderedExtractor(SentencePieceExtractor):
        # transformers 5.24's SpmConverter BPE path calls `SpmExtractor(file).extract(vocab_scores)`
        # and unpacks two values, but the default extractor now takes a model type and returns a
        # dict, so the converter crashes. This adapter returns (vocab, merges) with merges ranked by
        # piece score, which is what transformers 4's extractor returned to the same call.
        def extract(self, vocab_scores=None):
            vocab, _, merges = super().extract(vocab_scores)
            return vocab, merges

    class Converter(LlamaConverter):
        SpmExtractor = ScoreOrderedExtractor

    slow = SentencePieceBackend(
        vocab_file=str(model_path), legacy=True, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    slow.add_prefix_space = True
    fast = Converter(slow).converted()
    # The converter registers only the control pieces (<s>, </s>) as added tokens; transformers
    # always treats <unk> as special too, and LLaMA tokenizer.json files list all three.
    fast.add_special_tokens([AddedToken(UNK, normalized=False, special=True)])
    bos_id = fast.token_to_id(BOS)
    fast.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
    )
    return fast


def tokenizer_config(added_tokens: dict[int, str], extra: dict | None = None) -> dict:
    """The tokenizer_config.json transformers needs to load this folder with the LLaMA behaviour.

    `legacy: true` and `add_bos_token: true` must be explicit: transformers 5 defaults them to false.
    """
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {
                "content": content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, content in sorted(added_tokens.items())
        },
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "legacy": True,
        "model_max_length": 4096,
        "pad_token": None,
        "padding_side": "left",
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": UNK,
        "use_default_system_prompt": False,
    }
    config.update(extra or {})
    return config


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_tokenizer_files(fast, out_dir: Path, added: dict[int, str], extra: dict | None = None) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into out_dir."""
    fast.save(str(out_dir / "tokenizer.json"), pretty=True)
    write_json(out_dir / "tokenizer_config.json", tokenizer_config(added, extra))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK}
    if extra and extra.get("pad_token"):
        special["pad_token"] = extra["pad_token"]
    write_json(out_dir / "special_tokens_map.json", special)


def record_cases(model_path: Path, out_dir: Path) -> list[str]:
    """Encode every case with sentencepiece, tokenizer.json and transformers; return disagreements."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    # Everything is reloaded from the files on disk so the cases describe those files.
    fast = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(out_dir)
    cases = []
    disagreements = []
    for name, text in CASES:
        sp_ids = sp.encode(text)
        fast_ids = fast.encode(text, add_special_tokens=False).ids
        case = {
            "name": name,
            "text": text,
            "sp_ids": sp_ids,
            "sp_pieces": sp.id_to_piece(sp_ids),
            "fast_ids": fast_ids,
            "fast_ids_with_special": fast.encode(text, add_special_tokens=True).ids,
            "decoded": fast.decode(fast_ids, skip_special_tokens=False),
            "sp_decoded": sp.decode(sp_ids),
            "hf_ids": hf.encode(text, add_special_tokens=False),
            "hf_ids_with_special": hf.encode(text, add_special_tokens=True),
            "sp_fast_agree": sp_ids == fast_ids,
        }
        case["hf_fast_agree"] = case["hf_ids"] == fast_ids
        if sp_ids != fast_ids:
            disagreements.append(f"sp/fast {name}: sp={sp_ids} fast={fast_ids}")
        if case["hf_ids"] != fast_ids:
            disagreements.append(f"hf/fast {name}: hf={case['hf_ids']} fast={fast_ids}")
        if case["hf_ids_with_special"] != case["fast_ids_with_special"]:
            disagreements.append(f"hf/fast with special {name}")
        cases.append(case)
    payload = {
        "vocab_size": sp.get_piece_size(),
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "unk_id": sp.unk_id(),
        "pad_id": sp.pad_id(),
        "legacy": True,
        "note": (
            "sp_ids: sentencepiece encode(text) (no BOS; special-token text is plain text to it). "
            "fast_ids: tokenizers.Tokenizer.from_file(tokenizer.json).encode(text, "
            "add_special_tokens=False); fast_ids_with_special: the same with the BOS post-processor. "
            "decoded: tokenizers decode(fast_ids, skip_special_tokens=False). sp_decoded: sentencepiece "
            "decode(sp_ids). hf_ids: transformers 5 AutoTokenizer on this folder. Cases where they "
            "differ are kept on purpose (see sp_fast_agree, hf_fast_agree)."
        ),
        "cases": cases,
    }
    text = json.dumps(payload, indent=1, ensure_ascii=False) + "\n"
    (out_dir / "tokenizer_cases.json").write_text(text, encoding="utf-8")
    return disagreements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    parser.add_argument("--fixtures", type=Path, default=default_fixtures)
    args = parser.parse_args()

    out_dir: Path = args.fixtures / "tokenizer"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model_path = out_dir / "tokenizer.model"
    train(model_path)
    fast = build_fast(model_path)
    save_tokenizer_files(fast, out_dir, {0: UNK, 1: BOS, 2: EOS})
    disagreements = record_cases(model_path, out_dir)
    print(f"tokenizer: {fast.get_vocab_size()} tokens -> {out_dir}")
    for line in disagreements:
        print(f"  disagree {line}")
    print(f"  {len(CASES)} cases, {len(disagreements)} disagreements")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
