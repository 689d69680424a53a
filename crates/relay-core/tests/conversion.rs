//! Conversion between the chat protocols, checked on recorded provider answers
//! (`tests/fixtures/`): every stream is framed in small pieces, converted event by
//! event, and read back the way each official SDK accumulates it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use relay_core::convert::{self, StreamConverter};
use relay_core::protocol::Protocol;
use relay_core::sse::{SseFramer, event_data};
use serde_json::{Value, json};

const OPENAI: Protocol = Protocol::OpenAiChat;
const ANTHROPIC: Protocol = Protocol::AnthropicMessages;
const GEMINI: Protocol = Protocol::GeminiGenerate;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One client event: its `event:` name (if any) and its data (`[DONE]` as a string).
type Event = (Option<String>, Value);

/// Streams a fixture of `channel`'s protocol through a converter to `client`'s, fed
/// seven bytes at a time.
fn convert_stream(
    channel: Protocol,
    client: Protocol,
    name: &str,
    wants_usage: bool,
) -> Vec<Event> {
    let raw = fixture(name);
    let mut framer = SseFramer::default();
    let mut converter = StreamConverter::new(channel, client, wants_usage);
    let mut out = Vec::new();
    for piece in raw.as_bytes().chunks(7) {
        for ev in framer.push(piece) {
            out.extend(converter.push_sse(&ev));
        }
    }
    if let Some(rest) = framer.finish() {
        out.extend(converter.push_sse(&rest));
    }
    out.extend(converter.finish());
    out.iter()
        .map(|ev| {
            let text = String::from_utf8(ev.to_vec()).unwrap();
            assert!(
                text.ends_with("\n\n"),
                "an event must end with a blank line: {text:?}"
            );
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .map(str::to_owned);
            let data = event_data(ev);
            let value = serde_json::from_str(&data).unwrap_or(Value::String(data.into_owned()));
            (name, value)
        })
        .collect()
}

/// What the OpenAI SDK assembles from chunks.
#[derive(Debug, Default)]
struct ChatTotal {
    content: String,
    reasoning: String,
    /// (id, name, arguments) by tool-call index.
    calls: Vec<(String, String, String)>,
    finish: Option<String>,
    usage: Option<Value>,
    done: bool,
}

fn read_openai(events: &[Event]) -> ChatTotal {
    let mut t = ChatTotal::default();
    for (name, data) in events {
        assert!(name.is_none(), "OpenAI events are unnamed");
        assert!(!t.done, "nothing may follow [DONE]");
        if data == "[DONE]" {
            t.done = true;
            continue;
        }
        assert_eq!(data["object"], "chat.completion.chunk", "{data}");
        if data.get("usage").is_some_and(|u| !u.is_null()) {
            t.usage = Some(data["usage"].clone());
        }
        for c in data["choices"].as_array().unwrap() {
            let d = &c["delta"];
            if let Some(s) = d["content"].as_str() {
                t.content.push_str(s);
            }
            if let Some(s) = d["reasoning_content"].as_str() {
                t.reasoning.push_str(s);
            }
            for call in d["tool_calls"].as_array().into_iter().flatten() {
                let i = call["index"].as_u64().unwrap() as usize;
                if i == t.calls.len() {
                    assert!(call["id"].is_string(), "a new call needs its id: {call}");
                    assert_eq!(call["type"], "function");
                    t.calls.push(Default::default());
                }
                let entry = &mut t.calls[i];
                if let Some(id) = call["id"].as_str() {
                    entry.0 = id.to_owned();
                }
                if let Some(n) = call["function"]["name"].as_str() {
                    entry.1.push_str(n);
                }
                if let Some(a) = call["function"]["arguments"].as_str() {
                    entry.2.push_str(a);
                }
            }
            if let Some(f) = c["finish_reason"].as_str() {
                t.finish = Some(f.to_owned());
            }
        }
    }
    t
}

/// What the Anthropic SDK's message accumulator builds, checking the event order it
/// relies on.
fn read_anthropic(events: &[Event]) -> Value {
    let mut message = Value::Null;
    let mut open: Option<usize> = None;
    let mut partial = String::new();
    let mut stopped = false;
    for (name, data) in events {
        let kind = data["type"].as_str().unwrap();
        assert_eq!(
            name.as_deref(),
            Some(kind),
            "the event name is the data type"
        );
        assert!(!stopped, "nothing may follow message_stop");
        match kind {
            "message_start" => {
                assert!(message.is_null(), "one message_start");
                message = data["message"].clone();
                assert_eq!(message["type"], "message");
                assert_eq!(message["role"], "assistant");
                assert!(message["id"].is_string() && message["model"].is_string());
            }
            "content_block_start" => {
                assert!(open.is_none(), "the previous block was not stopped");
                let i = data["index"].as_u64().unwrap() as usize;
                let content = message["content"].as_array_mut().unwrap();
                assert_eq!(i, content.len(), "blocks are numbered in order");
                content.push(data["content_block"].clone());
                open = Some(i);
                partial.clear();
            }
            "content_block_delta" => {
                let i = data["index"].as_u64().unwrap() as usize;
                assert_eq!(Some(i), open, "a delta for a block that is not open");
                let block = &mut message["content"][i];
                let d = &data["delta"];
                match d["type"].as_str().unwrap() {
                    "text_delta" => {
                        let s = format!(
                            "{}{}",
                            block["text"].as_str().unwrap(),
                            d["text"].as_str().unwrap()
                        );
                        block["text"] = json!(s);
                    }
                    "thinking_delta" => {
                        let s = format!(
                            "{}{}",
                            block["thinking"].as_str().unwrap(),
                            d["thinking"].as_str().unwrap()
                        );
                        block["thinking"] = json!(s);
                    }
                    "input_json_delta" => partial.push_str(d["partial_json"].as_str().unwrap()),
                    other => panic!("unexpected delta {other}"),
                }
            }
            "content_block_stop" => {
                let i = data["index"].as_u64().unwrap() as usize;
                assert_eq!(Some(i), open);
                if message["content"][i]["type"] == "tool_use" && !partial.is_empty() {
                    message["content"][i]["input"] = serde_json::from_str(&partial).unwrap();
                }
                open = None;
            }
            "message_delta" => {
                assert!(open.is_none(), "message_delta with a block open");
                message["stop_reason"] = data["delta"]["stop_reason"].clone();
                for (k, v) in data["usage"].as_object().unwrap() {
                    message["usage"][k] = v.clone();
                }
            }
            "message_stop" => stopped = true,
            "ping" => {}
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(stopped, "the stream must end with message_stop");
    message
}

/// The Gemini chunks' parts in order, the last finish reason and usage.
fn read_gemini(events: &[Event]) -> (Vec<Value>, Option<String>, Value) {
    let mut parts = Vec::new();
    let mut finish = None;
    let mut usage = Value::Null;
    for (name, data) in events {
        assert!(name.is_none());
        let c = &data["candidates"][0];
        assert_eq!(c["content"]["role"], "model", "{data}");
        for p in c["content"]["parts"].as_array().unwrap() {
            if p.get("text").is_some_and(|t| t == "") {
                continue;
            }
            parts.push(p.clone());
        }
        if let Some(f) = c["finishReason"].as_str() {
            finish = Some(f.to_owned());
        }
        if !data["usageMetadata"].is_null() {
            usage = data["usageMetadata"].clone();
        }
    }
    (parts, finish, usage)
}

#[test]
fn an_anthropic_tool_use_stream_reaches_an_openai_client_as_tool_call_chunks() {
    let events = convert_stream(ANTHROPIC, OPENAI, "anthropic/stream_tool_use.sse", true);
    let t = read_openai(&events);
    assert!(t.done);
    assert_eq!(t.content, "Okay, let me check the weather.");
    assert_eq!(t.calls.len(), 1);
    let (id, name, args) = &t.calls[0];
    assert_eq!(
        (id.as_str(), name.as_str()),
        ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")
    );
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({"location": "San Francisco, CA"})
    );
    assert_eq!(t.finish.as_deref(), Some("tool_calls"));
    let u = t.usage.unwrap();
    assert_eq!(
        (u["prompt_tokens"].as_i64(), u["completion_tokens"].as_i64()),
        (Some(472), Some(89))
    );
    assert_eq!(u["total_tokens"], 561);
}

#[test]
fn an_openai_client_that_did_not_ask_for_usage_gets_no_usage_chunk() {
    let events = convert_stream(ANTHROPIC, OPENAI, "anthropic/stream_tool_use.sse", false);
    let t = read_openai(&events);
    assert!(t.usage.is_none());
    assert!(t.done);
}

#[test]
fn an_openai_tool_call_stream_reaches_an_anthropic_client_as_a_tool_use_block() {
    let events = convert_stream(OPENAI, ANTHROPIC, "openai/chat_stream_tool_call.sse", false);
    let m = read_anthropic(&events);
    let content = m["content"].as_array().unwrap();
    assert_eq!(content.len(), 1, "{m}");
    assert_eq!(content[0]["type"], "tool_use");
    assert_eq!(content[0]["id"], "call_DdmO9pD3xa9XTPNJ32zg2hcA");
    assert_eq!(content[0]["name"], "get_weather");
    assert_eq!(content[0]["input"], json!({"location": "Paris, France"}));
    assert_eq!(m["stop_reason"], "tool_use");
    // OpenAI's prompt count includes the cached part; Anthropic's input does not.
    assert_eq!(m["usage"]["input_tokens"], 18);
    assert_eq!(m["usage"]["cache_read_input_tokens"], 64);
    assert_eq!(m["usage"]["output_tokens"], 17);
}

#[test]
fn an_openai_tool_call_stream_reaches_a_gemini_client_as_one_whole_function_call() {
    let events = convert_stream(OPENAI, GEMINI, "openai/chat_stream_tool_call.sse", false);
    let (parts, finish, usage) = read_gemini(&events);
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(parts[0]["functionCall"]["name"], "get_weather");
    assert_eq!(
        parts[0]["functionCall"]["args"],
        json!({"location": "Paris, France"})
    );
    assert_eq!(finish.as_deref(), Some("STOP"));
    assert_eq!(usage["promptTokenCount"], 82);
    assert_eq!(usage["candidatesTokenCount"], 17);
    assert_eq!(usage["cachedContentTokenCount"], 64);
    assert_eq!(usage["totalTokenCount"], 99);
}

#[test]
fn a_gemini_text_stream_reaches_an_anthropic_client_through_the_pivot() {
    let events = convert_stream(GEMINI, ANTHROPIC, "gemini/stream_text.sse", false);
    let m = read_anthropic(&events);
    assert_eq!(
        m["content"][0]["text"],
        "Hello! How can I help you today?\n"
    );
    assert_eq!(m["stop_reason"], "end_turn");
    assert_eq!(m["usage"]["input_tokens"], 8);
    assert_eq!(m["usage"]["output_tokens"], 10);
}

#[test]
fn a_gemini_function_call_stream_with_thoughts_reaches_an_openai_client() {
    let events = convert_stream(GEMINI, OPENAI, "gemini/stream_function_call.sse", true);
    let t = read_openai(&events);
    assert_eq!(t.reasoning, "Checking the weather.");
    assert_eq!(t.calls.len(), 1);
    assert_eq!(t.calls[0].1, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&t.calls[0].2).unwrap(),
        json!({"location": "Tokyo"})
    );
    assert_eq!(t.finish.as_deref(), Some("tool_calls"));
    let u = t.usage.unwrap();
    // Thoughts are output tokens, reported as reasoning.
    assert_eq!(u["prompt_tokens"], 50);
    assert_eq!(u["completion_tokens"], 42);
    assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 30);
    assert!(t.done);
}

#[test]
fn anthropic_thinking_reaches_a_gemini_client_as_thought_parts() {
    let events = convert_stream(ANTHROPIC, GEMINI, "anthropic/stream_thinking.sse", false);
    let (parts, finish, usage) = read_gemini(&events);
    assert_eq!(parts[0]["thought"], true);
    assert_eq!(parts[0]["text"], "27 * 453 = 12231");
    assert_eq!(parts[1]["text"], "27 * 453 = 12,231");
    assert_eq!(finish.as_deref(), Some("STOP"));
    // Cache reads are prompt tokens on Gemini's side, and counted as cached.
    assert_eq!(usage["promptTokenCount"], 40);
    assert_eq!(usage["cachedContentTokenCount"], 10);
    assert_eq!(usage["candidatesTokenCount"], 120);
}

#[test]
fn openai_reasoning_content_reaches_an_anthropic_client_as_a_thinking_block() {
    let events = convert_stream(OPENAI, ANTHROPIC, "openai/chat_stream_text.sse", false);
    let m = read_anthropic(&events);
    let content = m["content"].as_array().unwrap();
    assert_eq!(content[0]["type"], "thinking");
    assert_eq!(content[0]["thinking"], "The user greets.");
    assert_eq!(content[1]["type"], "text");
    assert_eq!(content[1]["text"], "Hello there!");
    assert_eq!(m["stop_reason"], "end_turn");
    assert_eq!(m["usage"]["output_tokens"], 25);
}

fn convert_answer(channel: Protocol, client: Protocol, name: &str) -> Value {
    let body = convert::response(channel, client, fixture(name).as_bytes()).unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn whole_answers_with_tool_calls_convert_every_way_with_their_usage() {
    let a = convert_answer(OPENAI, ANTHROPIC, "openai/chat_tool_call.json");
    assert_eq!(a["type"], "message");
    assert_eq!(a["content"][0]["type"], "tool_use");
    assert_eq!(
        a["content"][0]["input"],
        json!({"location": "Paris, France"})
    );
    assert_eq!(a["stop_reason"], "tool_use");
    assert_eq!(
        (
            a["usage"]["input_tokens"].as_i64(),
            a["usage"]["cache_read_input_tokens"].as_i64()
        ),
        (Some(18), Some(64))
    );

    let g = convert_answer(OPENAI, GEMINI, "openai/chat_tool_call.json");
    assert_eq!(
        g["candidates"][0]["content"]["parts"][0]["functionCall"]["args"]["location"],
        "Paris, France"
    );
    assert_eq!(g["usageMetadata"]["promptTokenCount"], 82);

    let o = convert_answer(ANTHROPIC, OPENAI, "anthropic/message_tool_use.json");
    let msg = &o["choices"][0]["message"];
    assert_eq!(msg["content"], "I'll check the weather in Paris.");
    assert_eq!(msg["tool_calls"][0]["id"], "toolu_01A09q90qw90lq917835lq9");
    let args: Value = serde_json::from_str(
        msg["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"location": "Paris, France"}));
    assert_eq!(o["choices"][0]["finish_reason"], "tool_calls");
    // Input, cache reads and cache writes are all prompt tokens.
    assert_eq!(o["usage"]["prompt_tokens"], 2572);
    assert_eq!(o["usage"]["prompt_tokens_details"]["cached_tokens"], 2000);

    let g = convert_answer(ANTHROPIC, GEMINI, "anthropic/message_tool_use.json");
    let parts = &g["candidates"][0]["content"]["parts"];
    assert_eq!(parts[0]["text"], "I'll check the weather in Paris.");
    assert_eq!(parts[1]["functionCall"]["name"], "get_weather");

    let o = convert_answer(GEMINI, OPENAI, "gemini/generate_function_call.json");
    assert_eq!(o["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        o["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(o["usage"]["completion_tokens"], 55);
    assert_eq!(
        o["usage"]["completion_tokens_details"]["reasoning_tokens"],
        40
    );
    assert_eq!(o["usage"]["prompt_tokens_details"]["cached_tokens"], 100);

    let a = convert_answer(GEMINI, ANTHROPIC, "gemini/generate_function_call.json");
    assert_eq!(a["content"][0]["type"], "tool_use");
    assert_eq!(
        a["content"][0]["input"],
        json!({"location": "Paris, France"})
    );
    assert_eq!(a["stop_reason"], "tool_use");
    assert_eq!(a["usage"]["output_tokens"], 55);
}

/// A conversation with everything: system prompt, an image, a tool call, its result,
/// and a follow-up question.
fn openai_conversation() -> Value {
    json!({
        "model": "alias",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and the weather there?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":21}"},
            {"role": "user", "content": "Thanks. Anything else?"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stop": "END",
        "max_tokens": 300,
        "temperature": 0.2
    })
}

fn convert_request(
    client: Protocol,
    channel: Protocol,
    body: &Value,
    stream: bool,
) -> Result<Value, String> {
    convert::request(
        client,
        channel,
        body.to_string().as_bytes(),
        "upstream-model",
        stream,
    )
    .map(|b| serde_json::from_slice(&b).unwrap())
    .map_err(|e| e.0)
}

#[test]
fn an_openai_conversation_becomes_an_anthropic_request_and_comes_back_the_same() {
    let a = convert_request(OPENAI, ANTHROPIC, &openai_conversation(), false).unwrap();
    assert_eq!(a["model"], "upstream-model");
    assert_eq!(a["system"], "You are terse.");
    assert_eq!(a["max_tokens"], 300);
    assert_eq!(a["stop_sequences"], json!(["END"]));
    assert_eq!(
        a["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );
    assert_eq!(a["tools"][0]["input_schema"]["required"], json!(["city"]));
    let msgs = a["messages"].as_array().unwrap();
    let roles: Vec<_> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"], "roles alternate");
    assert_eq!(
        msgs[0]["content"][1]["source"],
        json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="})
    );
    assert_eq!(
        msgs[1]["content"][0],
        json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}})
    );
    // The tool result comes first in the user turn, then the follow-up.
    assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
    assert_eq!(msgs[2]["content"][0]["tool_use_id"], "call_1");
    assert_eq!(msgs[2]["content"][1]["text"], "Thanks. Anything else?");

    let back = convert_request(ANTHROPIC, OPENAI, &a, true).unwrap();
    let msgs = back["messages"].as_array().unwrap();
    let roles: Vec<_> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
    assert_eq!(
        msgs[1]["content"][1]["image_url"]["url"],
        "data:image/png;base64,iVBORw0KGgo="
    );
    assert_eq!(msgs[2]["tool_calls"][0]["id"], "call_1");
    assert_eq!(msgs[3]["tool_call_id"], "call_1");
    assert_eq!(back["tool_choice"]["function"]["name"], "get_weather");
    assert_eq!(back["stream_options"]["include_usage"], true);
}

#[test]
fn an_openai_conversation_becomes_a_gemini_request_and_comes_back_the_same() {
    let mut body = openai_conversation();
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}});
    let g = convert_request(OPENAI, GEMINI, &body, false).unwrap();
    assert_eq!(g["systemInstruction"]["parts"][0]["text"], "You are terse.");
    let contents = g["contents"].as_array().unwrap();
    let roles: Vec<_> = contents
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "model", "user"]);
    assert_eq!(
        contents[0]["parts"][1]["inlineData"],
        json!({"mimeType": "image/png", "data": "iVBORw0KGgo="})
    );
    assert_eq!(
        contents[1]["parts"][0]["functionCall"]["args"],
        json!({"city": "Paris"})
    );
    // The result is matched to its call's name.
    assert_eq!(
        contents[2]["parts"][0]["functionResponse"]["name"],
        "get_weather"
    );
    assert_eq!(
        contents[2]["parts"][0]["functionResponse"]["response"],
        json!({"temp_c": 21})
    );
    assert_eq!(
        g["tools"][0]["functionDeclarations"][0]["name"],
        "get_weather"
    );
    assert_eq!(
        g["toolConfig"]["functionCallingConfig"],
        json!({"mode": "ANY", "allowedFunctionNames": ["get_weather"]})
    );
    let config = &g["generationConfig"];
    assert_eq!(config["maxOutputTokens"], 300);
    assert_eq!(config["stopSequences"], json!(["END"]));
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(config["responseJsonSchema"], json!({"type": "object"}));

    let back = convert_request(GEMINI, OPENAI, &g, false).unwrap();
    let msgs = back["messages"].as_array().unwrap();
    let roles: Vec<_> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
    assert_eq!(
        msgs[2]["tool_calls"][0]["id"], msgs[3]["tool_call_id"],
        "the result answers its call"
    );
    assert_eq!(back["response_format"]["type"], "json_schema");
    assert_eq!(back["max_completion_tokens"], 300);
}

#[test]
fn a_gemini_request_without_call_ids_pairs_each_result_with_its_call() {
    let g = json!({
        "contents": [
            {"role": "user", "parts": [{"text": "weather in Paris and Rome?"}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "get_weather", "response": {"temp": 25}}}
            ]}
        ],
        "tools": [{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}}]}]
    });
    let a = convert_request(GEMINI, ANTHROPIC, &g, false).unwrap();
    let msgs = a["messages"].as_array().unwrap();
    let ids: Vec<_> = msgs[1]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].clone())
        .collect();
    let answered: Vec<_> = msgs[2]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["tool_use_id"].clone())
        .collect();
    assert_eq!(ids, answered);
    assert_ne!(ids[0], ids[1]);
    // Gemini's capitalised schema types become JSON Schema's.
    assert_eq!(
        a["tools"][0]["input_schema"]["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(
        a["max_tokens"], 4096,
        "Anthropic needs a limit; the default is named"
    );
}

#[test]
fn what_the_other_side_cannot_express_is_a_clear_error_naming_the_field() {
    let mut n2 = openai_conversation();
    n2["n"] = json!(2);
    assert!(
        convert_request(OPENAI, ANTHROPIC, &n2, false)
            .unwrap_err()
            .contains("'n'")
    );
    let mut schema = openai_conversation();
    schema["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}});
    assert!(
        convert_request(OPENAI, ANTHROPIC, &schema, false)
            .unwrap_err()
            .contains("response_format")
    );
    let top_k = json!({"model": "m", "max_tokens": 10, "top_k": 5, "messages": [{"role": "user", "content": "hi"}]});
    assert!(
        convert_request(ANTHROPIC, OPENAI, &top_k, false)
            .unwrap_err()
            .contains("top_k")
    );
    let search = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "tools": [{"googleSearch": {}}]});
    assert!(
        convert_request(GEMINI, OPENAI, &search, false)
            .unwrap_err()
            .contains("googleSearch")
    );
    let doc = json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]});
    assert!(
        convert_request(ANTHROPIC, GEMINI, &doc, false)
            .unwrap_err()
            .contains("document")
    );
    assert!(convert_request(OPENAI, GEMINI, &json!({"model": "m"}), false).is_err());
}

#[test]
fn reasoning_effort_becomes_a_thinking_budget_below_max_tokens_which_never_grows() {
    // max_tokens is what the request was held for: the budget fits under it.
    let body = json!({"model": "m", "max_tokens": 8000, "reasoning_effort": "high", "messages": [{"role": "user", "content": "hi"}]});
    let a = convert_request(OPENAI, ANTHROPIC, &body, false).unwrap();
    assert_eq!(
        a["thinking"],
        json!({"type": "enabled", "budget_tokens": 7999})
    );
    assert_eq!(a["max_tokens"], 8000);
    let medium = json!({"model": "m", "max_tokens": 5000, "reasoning_effort": "medium", "messages": [{"role": "user", "content": "hi"}]});
    let a = convert_request(OPENAI, ANTHROPIC, &medium, false).unwrap();
    assert_eq!(a["thinking"]["budget_tokens"], 4096);
    assert_eq!(a["max_tokens"], 5000);
    // No room for Anthropic's smallest budget: no thinking, and still max_tokens 1000.
    let body = json!({"model": "m", "max_tokens": 1000, "reasoning_effort": "medium", "messages": [{"role": "user", "content": "hi"}]});
    let a = convert_request(OPENAI, ANTHROPIC, &body, false).unwrap();
    assert!(a.get("thinking").is_none(), "{a}");
    assert_eq!(a["max_tokens"], 1000);
    let g = convert_request(OPENAI, GEMINI, &body, false).unwrap();
    assert_eq!(
        g["generationConfig"]["thinkingConfig"]["includeThoughts"],
        true
    );
}

#[test]
fn thinking_is_left_out_where_anthropic_would_refuse_it_and_sampling_follows_its_rules() {
    let forced = json!({"model": "m", "reasoning_effort": "high", "temperature": 0.3, "top_p": 0.9,
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required",
        "messages": [{"role": "user", "content": "hi"}]});
    let a = convert_request(OPENAI, ANTHROPIC, &forced, false).unwrap();
    assert!(a.get("thinking").is_none(), "{a}");
    assert_eq!(a["temperature"], 0.3);
    assert!(
        a.get("top_p").is_none(),
        "temperature and top_p are not sent together"
    );

    let mut loop_turn = openai_conversation();
    loop_turn["tool_choice"] = json!("auto");
    loop_turn["reasoning_effort"] = json!("low");
    let a = convert_request(OPENAI, ANTHROPIC, &loop_turn, false).unwrap();
    assert!(
        a.get("thinking").is_none(),
        "a tool loop without signed thinking: {a}"
    );

    let plain = json!({"model": "m", "reasoning_effort": "low", "temperature": 0.3, "top_k": 5,
        "messages": [{"role": "user", "content": "hi"}]});
    let a = convert_request(OPENAI, ANTHROPIC, &plain, false);
    // top_k reaches Anthropic only without thinking; here it is dropped with temperature.
    let a = a.unwrap();
    assert_eq!(a["thinking"]["type"], "enabled");
    assert!(
        a.get("temperature").is_none() && a.get("top_k").is_none(),
        "{a}"
    );
}

#[test]
fn a_tool_call_whose_id_repeats_on_every_piece_stays_one_block() {
    let chunk = |delta: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
        )
    };
    let mut c = StreamConverter::new(OPENAI, ANTHROPIC, false);
    let mut out = Vec::new();
    for piece in ["{\"a\"", ":1}"] {
        let ev = chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": piece}}]}),
        );
        out.extend(c.push_sse(ev.as_bytes()));
    }
    out.extend(c.push_sse(format!("data: {}\n\n", json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})).as_bytes()));
    out.extend(c.push_sse(b"data: [DONE]\n\n"));
    let events: Vec<Event> = out
        .iter()
        .map(|ev| {
            let text = String::from_utf8(ev.to_vec()).unwrap();
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .map(str::to_owned);
            (name, serde_json::from_str(&event_data(ev)).unwrap())
        })
        .collect();
    let m = read_anthropic(&events);
    assert_eq!(m["content"].as_array().unwrap().len(), 1, "{m}");
    assert_eq!(m["content"][0]["input"], json!({"a": 1}));
}

#[test]
fn gemini_requests_written_in_snake_case_are_read_too() {
    let g = json!({
        "system_instruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generation_config": {"max_output_tokens": 77, "stop_sequences": ["X"]},
        "tools": [{"function_declarations": [{"name": "f", "parameters": {"type": "OBJECT", "properties": {"type": {"type": "STRING"}}}}]}]
    });
    let o = convert_request(GEMINI, OPENAI, &g, false).unwrap();
    assert_eq!(o["messages"][0]["content"], "Be brief.");
    assert_eq!(o["max_completion_tokens"], 77);
    assert_eq!(o["stop"], json!(["X"]));
    // A property named "type" is a schema, not a type name: its own type is lowered.
    assert_eq!(
        o["tools"][0]["function"]["parameters"]["properties"]["type"]["type"],
        "string"
    );
}

#[test]
fn null_token_counts_read_as_zero_and_a_blocked_gemini_prompt_ends_the_stream() {
    let body = json!({"id": "x", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": null, "prompt_tokens_details": {"cached_tokens": null}}});
    let a = convert::response(OPENAI, ANTHROPIC, body.to_string().as_bytes()).unwrap();
    let a: Value = serde_json::from_slice(&a).unwrap();
    assert_eq!(
        (
            a["usage"]["input_tokens"].as_i64(),
            a["usage"]["output_tokens"].as_i64()
        ),
        (Some(3), Some(2))
    );

    let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 7}});
    let mut c = StreamConverter::new(GEMINI, OPENAI, true);
    let mut out = c.push_sse(format!("data: {blocked}\n\n").as_bytes());
    out.extend(c.finish());
    let events: Vec<Event> = out
        .iter()
        .map(|ev| {
            (
                None,
                serde_json::from_str(&event_data(ev))
                    .unwrap_or(Value::String(event_data(ev).into_owned())),
            )
        })
        .collect();
    let t = read_openai(&events);
    assert_eq!(t.finish.as_deref(), Some("content_filter"));
    assert!(t.done);
    assert_eq!(t.usage.unwrap()["prompt_tokens"], 7);
}

#[test]
fn a_responses_request_with_calls_and_their_outputs_becomes_chat_and_the_stream_comes_back_in_order()
 {
    let r = json!({
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}, {"type": "input_image", "image_url": "https://example.com/a.png"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "{\"temp\":21}"}
        ],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        "max_output_tokens": 50
    });
    let c = convert_request(Protocol::OpenAiResponses, OPENAI, &r, false).unwrap();
    let roles: Vec<_> = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool"]);
    assert_eq!(c["messages"][2]["tool_calls"][0]["id"], "call_1");
    assert_eq!(c["messages"][3]["tool_call_id"], "call_1");
    assert_eq!(c["response_format"]["json_schema"]["name"], "w");
    assert_eq!(c["max_completion_tokens"], 50);
    let hosted = json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]});
    assert!(
        convert_request(Protocol::OpenAiResponses, ANTHROPIC, &hosted, false)
            .unwrap_err()
            .contains("web_search")
    );

    let events = convert_stream(
        ANTHROPIC,
        Protocol::OpenAiResponses,
        "anthropic/stream_tool_use.sse",
        false,
    );
    let kinds: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"));
    assert_eq!(kinds.last(), Some(&"response.completed"));
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_deref().unwrap());
        assert_eq!(data["sequence_number"], i, "sequence numbers count up");
    }
    let done = &events.last().unwrap().1["response"];
    assert_eq!(
        done["output"][0]["content"][0]["text"],
        "Okay, let me check the weather."
    );
    assert_eq!(done["output"][1]["type"], "function_call");
    assert_eq!(
        done["output"][1]["call_id"],
        "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    );
    assert_eq!(
        done["output"][1]["arguments"],
        "{\"location\": \"San Francisco, CA\"}"
    );
    assert_eq!(done["usage"]["input_tokens"], 472);
    assert_eq!(done["usage"]["output_tokens"], 89);
}
