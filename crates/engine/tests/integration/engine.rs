//! The engine end to end on the real model, with no Node: answers, determinism, limits, cancel.

use crate::common::engine;
use qwen_engine::{EngineError, Event, FinishReason};
use serde_json::json;

/// Runs a request to the end: (text, finish reason, completion tokens).
fn run(body: serde_json::Value) -> Result<(String, FinishReason, usize), EngineError> {
    let (message, reason, usage) = engine().submit_json(&body)?.blocking_answer()?;
    Ok((message.content, reason, usage.completion_tokens))
}

fn ask(q: &str) -> serde_json::Value {
    json!({ "messages": [{ "role": "user", "content": q }], "temperature": 0 })
}

#[test]
fn greedy_answer_names_paris() {
    let (text, reason, _) = run(ask("What is the capital of France? Answer in one word.")).unwrap();
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(reason, FinishReason::Stop);
}

#[test]
fn same_seed_same_text_and_max_tokens_is_exact() {
    let body = json!({
        "messages": [{ "role": "user", "content": "Invent a name for a cat." }],
        "temperature": 1.0, "seed": 99, "max_tokens": 12
    });
    let a = run(body.clone()).unwrap();
    let b = run(body).unwrap();
    assert_eq!(a.0, b.0);
    assert!(a.2 <= 12);
    let long = json!({ "messages": [{ "role": "user", "content": "Tell a long story." }], "temperature": 0, "max_tokens": 7 });
    let (_, reason, tokens) = run(long).unwrap();
    assert_eq!((reason, tokens), (FinishReason::Length, 7));
}

#[test]
fn context_overflow_is_an_error_before_any_compute() {
    let mut body = ask("hi");
    body["max_tokens"] = json!(40_000);
    let err = run(body).unwrap_err();
    assert_eq!(err.code(), "ERR_CONTEXT_LENGTH");
}

#[test]
fn a_cancelled_request_ends_with_aborted_and_the_engine_goes_on() {
    let mut body = ask("Write a long essay about the ocean.");
    body["max_tokens"] = json!(2000);
    let mut g = engine().submit_json(&body).unwrap();
    let mut pieces = 0;
    let outcome = loop {
        match g.blocking_next() {
            Some(Ok(Event::Text(_))) => {
                pieces += 1;
                if pieces == 3 {
                    g.cancel();
                }
            }
            Some(Ok(Event::Finished { .. })) => panic!("finished despite cancel"),
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(e)) => break e,
            None => panic!("no error after cancel"),
        }
    };
    assert_eq!(outcome.code(), "ERR_ABORTED");
    // At most one more token step ran after the cancel.
    assert!(pieces <= 4, "{pieces} pieces");
    let (text, _, _) = run(ask("What is the capital of France? Answer in one word.")).unwrap();
    assert!(text.contains("Paris"));
}

#[test]
fn invalid_requests_are_rejected_at_submit() {
    let err = engine()
        .submit_json(&json!({ "messages": [{ "role": "user", "content": 1 }] }))
        .err()
        .unwrap();
    assert_eq!(err.code(), "ERR_INVALID_REQUEST");
}
