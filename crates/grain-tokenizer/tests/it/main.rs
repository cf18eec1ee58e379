//! Integration tests of grain-tokenizer against fixtures made by reference
//! implementations (sentencepiece, transformers, LLaVA's algorithms); see
//! `tests/parity/make_tokenizer.py` and `tests/parity/tokenizer_prompts.py`.

mod common;
mod hf_tiny;
mod incremental;
mod parity;
mod prompts;
