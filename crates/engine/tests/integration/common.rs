use qwen_engine::candle_core::quantized::gguf_file;
use qwen_engine::grammar::GrammarCompiler;
use qwen_engine::prompt::render_prompt;
use qwen_engine::request::ChatRequest;
use qwen_engine::sampling::SamplingParams;
use qwen_engine::template::ChatTemplate;
use qwen_engine::tokenizer::Tokenizer;
use qwen_engine::{Engine, EngineOptions};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default model; a missing file fails the test with the command that fetches it.
pub fn model_path() -> PathBuf {
    let path = std::env::var_os("QWEN_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"));
    assert!(
        path.is_file(),
        "test model missing at {}: run `npm run fetch-model`",
        path.display()
    );
    path
}

/// The GGUF header and metadata of the default model, read once.
pub fn gguf() -> &'static gguf_file::Content {
    static CONTENT: OnceLock<gguf_file::Content> = OnceLock::new();
    CONTENT.get_or_init(|| {
        let mut f = std::fs::File::open(model_path()).expect("open model");
        gguf_file::Content::read(&mut f).expect("read GGUF header")
    })
}

pub fn chat_template_source() -> String {
    gguf().metadata["tokenizer.chat_template"]
        .to_string()
        .expect("chat template")
        .clone()
}

/// One engine on the default model for every test in the binary (tests run in parallel and
/// queue on it, as concurrent requests do).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut opts = EngineOptions::new(model_path());
        opts.threads = Some(2);
        Engine::load(&opts, None).expect("load the default model")
    })
}

/// The default model's tokenizer, built once.
pub fn tokenizer() -> Arc<Tokenizer> {
    static T: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| Arc::new(Tokenizer::from_gguf(gguf()).unwrap()))
        .clone()
}

/// The default model's chat template.
pub fn template() -> &'static ChatTemplate {
    static T: OnceLock<ChatTemplate> = OnceLock::new();
    T.get_or_init(|| ChatTemplate::new(&chat_template_source(), "", "<|im_end|>").unwrap())
}

/// Grammars over the default model's vocabulary, built once.
pub fn compiler() -> &'static GrammarCompiler {
    static C: OnceLock<GrammarCompiler> = OnceLock::new();
    C.get_or_init(|| {
        let t = tokenizer();
        let eot = t.added_token_id("<|im_end|>").unwrap();
        GrammarCompiler::new(t, 151_936, eot).unwrap()
    })
}

/// Validates and renders a body: None when the body is refused (with ERR_INVALID_REQUEST); the
/// prompt tokens and the rendered text otherwise.
pub fn rendered_prompt(body: &Value) -> Option<(Vec<u32>, String)> {
    let request = match ChatRequest::from_json(body, &SamplingParams::greedy()) {
        Ok(r) => r,
        Err(e) => {
            assert_eq!(e.code(), "ERR_INVALID_REQUEST", "{e}");
            return None;
        }
    };
    let tokenizer = tokenizer();
    match render_prompt(&tokenizer, template(), &request, request.tools.as_deref()) {
        Ok(ids) => {
            let text = template()
                .render(&request.messages, request.tools.as_deref(), true)
                .unwrap();
            Some((ids, text))
        }
        Err(e) => {
            assert_eq!(e.code(), "ERR_INVALID_REQUEST", "{e}");
            None
        }
    }
}

pub fn special_ids(ids: &[u32]) -> Vec<u32> {
    let added: Vec<u32> = tokenizer().added_ids().collect();
    ids.iter().copied().filter(|i| added.contains(i)).collect()
}
