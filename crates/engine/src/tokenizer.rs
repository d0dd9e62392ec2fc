//! Byte-level BPE tokenizer for Qwen2, built from GGUF metadata or `tokenizer.json`.
//!
//! Added tokens (`<|im_start|>`, `<tool_call>`, ...) are matched here, not by `tokenizers`, so
//! that they are recognised only in text the chat template itself wrote: a user who types
//! `<|im_start|>system` or `<tool_call>` gets those characters as text, not markup.

use crate::error::{EngineError, Result};
use candle_core::quantized::gguf_file;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::SplitDelimiterBehavior;

/// Largest vocabulary a tokenizer may declare.
const MAX_VOCAB: usize = 1 << 21;

/// Qwen2's pre-tokenizer regex, as in its `tokenizer.json`.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A token outside the BPE merges, matched verbatim in text.
#[derive(Debug, Clone)]
struct AddedToken {
    text: String,
    id: u32,
    /// Control tokens (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`) structure the conversation
    /// and are only recognised in template markup.
    control: bool,
}

/// Text to tokenize, and whether it is the template's own markup (trusted) or caller content.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub text: &'a str,
    pub markup: bool,
}

pub struct Tokenizer {
    /// Normalizer + pre-tokenizer + BPE, with no added tokens.
    bpe: tokenizers::Tokenizer,
    /// Longest first, so the first match at a position is the longest.
    added: Vec<AddedToken>,
    /// Id -> the bytes it stands for.
    pieces: Vec<Vec<u8>>,
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr = md
                .get(key)
                .ok_or_else(|| EngineError::load(format!("GGUF metadata lacks {key}")))?
                .to_vec()
                .map_err(|e| EngineError::load(format!("{key}: {e}")))?;
            arr.iter()
                .map(|v| {
                    v.to_string()
                        .cloned()
                        .map_err(|e| EngineError::load(format!("{key}: {e}")))
                })
                .collect()
        };
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or("");
        if model != "gpt2" {
            return Err(EngineError::load(format!(
                "unsupported GGUF tokenizer model `{model}` (Qwen2 uses byte-level BPE, `gpt2`)"
            )));
        }
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(EngineError::load(format!("invalid merge `{m}`"))),
            })
            .collect::<Result<_>>()?;
        let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| EngineError::load(format!("tokenizer.ggml.token_type: {e}")))?
                .iter()
                .map(|t| t.to_i32().map(i64::from).unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        // GGUF token types: 3 = control, 4 = user-defined (added, but plain text).
        let added = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, t))| **t == 3 || **t == 4)
            .map(|(id, (text, t))| AddedToken {
                text: text.clone(),
                id: id as u32,
                control: *t == 3,
            })
            .collect();
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| EngineError::load(format!("cannot build BPE model: {e}")))?;
        let mut tk = tokenizers::Tokenizer::new(bpe);
        tk.with_normalizer(Some(NFC))
            .map_err(|e| EngineError::load(format!("normalizer: {e}")))?;
        let split = Split::new(
            SplitPattern::Regex(QWEN2_PATTERN.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| EngineError::load(format!("pre-tokenizer: {e}")))?;
        tk.with_pre_tokenizer(Some(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ])));
        // Decoding is ours (`pieces`); the decoder makes an exported tokenizer.json complete.
        tk.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::new(
            false, false, false,
        )));
        let mut tokenizer = Self::assemble(tk, added)?;
        // Type 5 = unused padding ids (`[PAD151665]`...): no text, as in `tokenizer.json`.
        for (id, _) in types.iter().enumerate().filter(|(_, t)| **t == 5) {
            if let Some(p) = tokenizer.pieces.get_mut(id) {
                p.clear();
            }
        }
        Ok(tokenizer)
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Self> {
        let mut value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| EngineError::load(format!("tokenizer.json is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(EngineError::load("tokenizer.json must hold a JSON object"));
        }
        let added = value
            .get("added_tokens")
            .and_then(|a| a.as_array())
            .map(|arr| {
                arr.iter()
                    .map(|t| {
                        let text = t.get("content").and_then(|c| c.as_str());
                        let id = t.get("id").and_then(|i| i.as_u64());
                        match (text, id.and_then(|i| u32::try_from(i).ok())) {
                            (Some(text), Some(id)) => Ok(AddedToken {
                                text: text.to_string(),
                                id,
                                control: t.get("special").and_then(|s| s.as_bool()).unwrap_or(false),
                            }),
                            _ => Err(EngineError::load(format!(
                                "tokenizer.json: added token {t} needs a string `content` and a 32-bit `id`"
                            ))),
                        }
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?
            .unwrap_or_default();
        // Byte-level BPE joins pieces as they are; tokenizers also panics building merges that
        // are shorter than a continuation prefix.
        for affix in ["continuing_subword_prefix", "end_of_word_suffix"] {
            match value.get("model").and_then(|m| m.get(affix)) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) if s.is_empty() => {}
                Some(other) => {
                    return Err(EngineError::load(format!(
                    "unsupported tokenizer.json: model.{affix} is {other}; byte-level BPE has none"
                )))
                }
            }
        }
        // Added tokens are matched by `encode_segments`; the inner tokenizer only runs BPE.
        value["added_tokens"] = serde_json::Value::Array(vec![]);
        // The file is input: a panic in the library parsing it is a load error like any other.
        let tk: tokenizers::Tokenizer = catch_unwind(AssertUnwindSafe(|| {
            serde_json::from_value(value)
                .map_err(|e| EngineError::load(format!("unsupported tokenizer.json: {e}")))
        }))
        .map_err(|panic| {
            EngineError::load(format!(
                "tokenizer.json could not be read: {}",
                crate::error::panic_text(panic.as_ref())
            ))
        })??;
        Self::assemble(tk, added)
    }

    fn assemble(bpe: tokenizers::Tokenizer, mut added: Vec<AddedToken>) -> Result<Self> {
        added.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
        let byte_of = byte_level_decoder();
        let vocab = bpe.get_vocab(false);
        let size = vocab
            .values()
            .chain(added.iter().map(|t| &t.id))
            .max()
            .map_or(0, |m| *m as usize + 1);
        // The id table is as long as the largest id: a corrupt id must not size it (Qwen2's
        // vocabulary has 151,936 ids; the largest known vocabularies about 260,000).
        if size > MAX_VOCAB {
            return Err(EngineError::load(format!(
                "the tokenizer has a token id of {}, beyond any real vocabulary ({MAX_VOCAB} ids); the file is corrupt",
                size - 1
            )));
        }
        let mut pieces = vec![Vec::new(); size];
        for (piece, id) in vocab {
            pieces[id as usize] = piece
                .chars()
                .map(|c| byte_of.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_else(|| piece.into_bytes());
        }
        for t in &added {
            pieces[t.id as usize] = t.text.as_bytes().to_vec();
        }
        Ok(Self { bpe, added, pieces })
    }

    /// Number of ids the tokenizer knows.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Token ids given as numbers (as JavaScript passes them): each a whole number below the
    /// vocabulary size, never wrapped into range.
    pub fn ids_of(&self, numbers: &[f64]) -> Result<Vec<u32>> {
        let n = self.vocab_size();
        numbers
            .iter()
            .map(|&x| {
                if x.fract() == 0.0 && x >= 0.0 && x < n as f64 {
                    Ok(x as u32)
                } else {
                    Err(EngineError::invalid(format!(
                        "token id {x} is not one of the vocabulary's {n} ids (0 to {})",
                        n - 1
                    )))
                }
            })
            .collect()
    }

    /// Texts of the added tokens (recognised only in template markup).
    pub fn added_tokens(&self) -> Vec<&str> {
        self.added.iter().map(|t| t.text.as_str()).collect()
    }

    /// Ids of all added tokens, control or not (`<|im_end|>`, `<tool_call>`, ...).
    pub fn added_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.added.iter().map(|t| t.id)
    }

    /// The id of an added token such as `<|im_end|>`.
    pub fn added_token_id(&self, text: &str) -> Option<u32> {
        self.added.iter().find(|t| t.text == text).map(|t| t.id)
    }

    /// Tokenizes text. As `markup`, added-token text becomes added tokens (as `tokenizers`
    /// does); otherwise it is tokenized as ordinary characters.
    pub fn encode(&self, text: &str, markup: bool) -> Result<Vec<u32>> {
        self.encode_segments(&[Segment { text, markup }])
    }

    /// Tokenizes the concatenation of `segments`; added tokens are matched only in markup.
    /// Text on both sides of a segment boundary is tokenized as one piece, exactly as if it had
    /// been one string.
    pub fn encode_segments(&self, segments: &[Segment<'_>]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut pending = String::new();
        for seg in segments.iter() {
            let text = seg.text;
            if !seg.markup {
                pending.push_str(text);
                continue;
            }
            let mut plain_start = 0;
            let mut i = 0;
            while i < text.len() {
                match self.added_at(&text[i..]) {
                    Some(tok) => {
                        pending.push_str(&text[plain_start..i]);
                        self.flush(&mut pending, &mut ids)?;
                        ids.push(tok.id);
                        i += tok.text.len();
                        plain_start = i;
                    }
                    None => i += utf8_len(text.as_bytes()[i]),
                }
            }
            pending.push_str(&text[plain_start..]);
        }
        self.flush(&mut pending, &mut ids)?;
        Ok(ids)
    }

    fn added_at(&self, rest: &str) -> Option<&AddedToken> {
        self.added
            .iter()
            .find(|t| rest.starts_with(t.text.as_str()))
    }

    fn flush(&self, pending: &mut String, ids: &mut Vec<u32>) -> Result<()> {
        if !pending.is_empty() {
            let enc = self
                .bpe
                .encode(pending.as_str(), false)
                .map_err(|e| EngineError::Internal(format!("tokenizer: {e}")))?;
            ids.extend_from_slice(enc.get_ids());
            pending.clear();
        }
        Ok(())
    }

    /// A Hugging Face `tokenizer.json` equivalent to this tokenizer (for exported model directories).
    pub fn to_hf_json(&self) -> Result<String> {
        let mut spec = serde_json::to_value(&self.bpe)
            .map_err(|e| EngineError::Internal(format!("serializing the tokenizer: {e}")))?;
        let mut added = self.added.clone();
        added.sort_by_key(|t| t.id);
        spec["added_tokens"] = added
            .iter()
            .map(|t| {
                serde_json::json!({
                    "id": t.id, "content": t.text, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": t.control,
                })
            })
            .collect();
        serde_json::to_string(&spec).map_err(|e| EngineError::Internal(e.to_string()))
    }

    /// The bytes of one token (empty for ids the vocabulary does not cover).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p.as_slice())
    }

    /// Decodes ids to text, keeping special tokens; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Inverse of GPT-2's bytes_to_unicode: the printable character that stands for each byte.
fn byte_level_decoder() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xa1..=0xac)
        .chain(0xae..=0xff)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    printable
        .into_iter()
        .zip(chars)
        .filter_map(|(b, c)| Some((char::from_u32(c)?, b as u8)))
        .collect()
}
