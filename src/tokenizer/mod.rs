//! Tokenizers: from GGUF metadata (byte-level BPE, SentencePiece-style) and from tokenizer.json;
//! chat templates in `template`.

pub mod template;
