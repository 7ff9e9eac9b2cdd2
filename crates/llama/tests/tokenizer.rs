//! Tokenizer rebuilt from GGUF metadata against ids from two Python references
//! (tools/golden/tokenizer_golden.py), HF-directory round trip, and chat templates against
//! transformers' jinja2 renders (tools/golden/chat_template_golden.py).

mod common;

use std::sync::OnceLock;

use llama::{ChatMessage, ChatTemplate, RenderOptions, Tokenizer};

fn smollm2_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::from_gguf(common::smollm2()).expect("tokenizer from GGUF"))
}

fn golden_cases() -> Vec<(String, Vec<u32>)> {
    let golden = common::read_json(&common::fixture("golden/smollm2_tokenizer.json"));
    golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let ids = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_u64().unwrap() as u32)
                .collect();
            (case["text"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

fn assert_matches_golden(tokenizer: &Tokenizer) {
    let cases = golden_cases();
    assert!(cases.len() >= 12);
    for (text, expected) in &cases {
        let ids = tokenizer.encode(text, true).unwrap();
        assert_eq!(&ids, expected, "ids of {text:?}");
        assert_eq!(
            &tokenizer.decode(&ids, false).unwrap(),
            text,
            "decode round trip of {text:?}"
        );
    }
}

#[test]
fn gguf_tokenizer_matches_python_references() {
    assert_matches_golden(smollm2_tokenizer());
}

#[test]
fn gguf_tokenizer_special_tokens() {
    let tokenizer = smollm2_tokenizer();
    assert_eq!(tokenizer.vocab_size(), 49_152);
    assert_eq!(tokenizer.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tokenizer.bos_token_id(), Some(1));
    assert_eq!(tokenizer.eos_token_ids(), &[2]);
    assert_eq!(tokenizer.pad_token_id(), Some(2));
    // No BOS is added even with add_special_tokens.
    assert_eq!(
        tokenizer.encode("Hi", true).unwrap(),
        tokenizer.encode("Hi", false).unwrap()
    );
    let ids = tokenizer
        .encode("<|im_start|>user\nHi<|im_end|>", false)
        .unwrap();
    assert_eq!(
        (ids[0], *ids.last().unwrap()),
        (1, 2),
        "special tokens in text are matched whole"
    );
    assert_eq!(
        tokenizer.decode(&ids, true).unwrap(),
        "user\nHi",
        "skip_special_tokens drops them"
    );
    let template =
        std::fs::read_to_string(common::fixture("templates/smollm2-chatml.jinja")).unwrap();
    assert_eq!(tokenizer.chat_template_source(), Some(template.as_str()));
}

#[test]
fn saved_tokenizer_reloads_identically() {
    let dir = tempfile::tempdir().unwrap();
    smollm2_tokenizer().save(dir.path()).unwrap();
    let reloaded = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_matches_golden(&reloaded);
    assert_eq!(reloaded.eos_token_ids(), &[2]);
    assert_eq!(reloaded.bos_token(), Some("<|im_start|>"));
    assert_eq!(reloaded.pad_token(), Some("<|im_end|>"));
    assert_eq!(
        reloaded.chat_template_source(),
        smollm2_tokenizer().chat_template_source()
    );
    let config = common::read_json(&dir.path().join("tokenizer_config.json"));
    assert_eq!(config["added_tokens_decoder"]["2"]["content"], "<|im_end|>");
    assert_eq!(config["added_tokens_decoder"]["2"]["special"], true);
    assert_eq!(config["add_bos_token"], false);
}

#[test]
fn generation_config_eos_ids_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    smollm2_tokenizer().save(dir.path()).unwrap();
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [2, 0]}"#,
    )
    .unwrap();
    assert_eq!(
        Tokenizer::from_hf_dir(dir.path()).unwrap().eos_token_ids(),
        &[2, 0]
    );
}

#[test]
fn missing_tokenizer_json_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let error = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(error.contains("tokenizer.json"), "{error}");
}

struct TemplateCase {
    label: String,
    template: String,
    bos: String,
    eos: String,
    messages: Vec<ChatMessage>,
    options: RenderOptions,
    expected: String,
    spans: Vec<std::ops::Range<usize>>,
}

fn template_cases() -> Vec<TemplateCase> {
    let golden = common::read_json(&common::fixture("golden/chat_templates.json"));
    golden
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let file = format!("templates/{}.jinja", case["template"].as_str().unwrap());
            TemplateCase {
                label: format!(
                    "{} / {}",
                    case["template"].as_str().unwrap(),
                    case["label"].as_str().unwrap()
                ),
                template: std::fs::read_to_string(common::fixture(&file)).unwrap(),
                bos: case["bos_token"].as_str().unwrap().into(),
                eos: case["eos_token"].as_str().unwrap().into(),
                messages: serde_json::from_value(case["messages"].clone()).unwrap(),
                options: RenderOptions {
                    add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
                    date_string: case["date_string"].as_str().map(str::to_string),
                },
                expected: case["expected"].as_str().unwrap().into(),
                spans: case["assistant_spans"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s[0].as_u64().unwrap() as usize..s[1].as_u64().unwrap() as usize)
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn chat_templates_render_byte_identical_to_jinja2() {
    let cases = template_cases();
    assert_eq!(cases.len(), 12);
    for case in &cases {
        let template =
            ChatTemplate::new(&case.template, case.bos.clone(), case.eos.clone()).unwrap();
        let rendered = template.render_with(&case.messages, &case.options).unwrap();
        assert_eq!(rendered, case.expected, "{}", case.label);
        if !case.options.add_generation_prompt {
            let conversation = template
                .render_with_assistant_spans(&case.messages, case.options.date_string.as_deref())
                .unwrap();
            assert_eq!(conversation.text, case.expected, "{}", case.label);
            assert_eq!(conversation.assistant_spans, case.spans, "{}", case.label);
        }
    }
}

#[test]
fn assistant_mask_covers_exactly_the_replies() {
    let tokenizer = smollm2_tokenizer();
    let template = tokenizer
        .chat_template()
        .unwrap()
        .expect("GGUF has a template");
    let messages = [
        ChatMessage::user("What is 2+2?"),
        ChatMessage::assistant("4."),
        ChatMessage::user("And 3+3?"),
        ChatMessage::assistant("It is 6."),
    ];
    let conversation = template
        .render_with_assistant_spans(&messages, None)
        .unwrap();
    let (ids, mask) = tokenizer.encode_with_assistant_mask(&conversation).unwrap();
    assert_eq!(ids.len(), mask.len());
    assert_eq!(ids, tokenizer.encode(&conversation.text, false).unwrap());
    let masked: Vec<u32> = ids
        .iter()
        .zip(&mask)
        .filter(|(_, m)| **m)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        tokenizer.decode(&masked, false).unwrap(),
        "4.<|im_end|>\nIt is 6.<|im_end|>\n"
    );
}
