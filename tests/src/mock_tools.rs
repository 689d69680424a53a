//! Tool calling as the mock upstreams play it, the same in all three protocols: a
//! request that offers tools and does not yet carry a tool's result is answered with
//! one call to the first tool, `{"city": "Paris"}`; a request that carries the result
//! must answer the call it made (same id, or for Gemini the same name), as the real
//! APIs insist, and is answered with text. Usage is the normal 12 / 30.

use serde_json::{Value, json};

/// The arguments of every call the mocks make.
pub fn arguments() -> Value {
    json!({"city": "Paris"})
}

/// The id the OpenAI mock gives its call.
pub const OPENAI_CALL_ID: &str = "call_mock_1";
/// The id the Anthropic mock gives its call.
pub const ANTHROPIC_CALL_ID: &str = "toolu_mock_1";

/// What a chat request asks of the OpenAI mock's tools.
pub enum Turn {
    /// No tools: answer as usual.
    Plain,
    /// Call this tool.
    Call(String),
    /// The result came back: answer with text.
    Answered,
    /// The result does not answer a call made: a 400 with this message.
    Invalid(String),
}

fn first_tool(tools: Option<&Vec<Value>>, name: impl Fn(&Value) -> Option<&str>) -> Option<String> {
    tools?.first().and_then(name).map(str::to_owned)
}

/// An OpenAI chat request's turn.
pub fn openai_turn(body: &Value) -> Turn {
    let Some(tool) = first_tool(body["tools"].as_array(), |t| t["function"]["name"].as_str())
    else {
        return Turn::Plain;
    };
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    match messages.last() {
        Some(m) if m["role"] == "tool" => {
            let id = m["tool_call_id"].as_str().unwrap_or_default();
            let called = messages.iter().any(|m| {
                m["tool_calls"]
                    .as_array()
                    .is_some_and(|calls| calls.iter().any(|c| c["id"] == id))
            });
            if called {
                Turn::Answered
            } else {
                Turn::Invalid(format!("tool_call_id {id} answers no tool call"))
            }
        }
        _ => Turn::Call(tool),
    }
}

/// An Anthropic Messages request's turn (roles must alternate, results must answer a
/// `tool_use` of the assistant turn before).
pub fn anthropic_turn(body: &Value) -> Turn {
    let Some(tool) = first_tool(body["tools"].as_array(), |t| t["name"].as_str()) else {
        return Turn::Plain;
    };
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    for pair in messages.windows(2) {
        if pair[0]["role"] == pair[1]["role"] {
            return Turn::Invalid("messages: roles must alternate".into());
        }
    }
    let blocks = |m: &Value| m["content"].as_array().cloned().unwrap_or_default();
    let Some(last) = messages.last() else {
        return Turn::Call(tool);
    };
    let results: Vec<Value> = blocks(last)
        .into_iter()
        .filter(|b| b["type"] == "tool_result")
        .collect();
    if results.is_empty() {
        return Turn::Call(tool);
    }
    let before = messages.len().checked_sub(2).map(|i| blocks(&messages[i]));
    for r in &results {
        let answered = before.as_ref().is_some_and(|b| {
            b.iter()
                .any(|u| u["type"] == "tool_use" && u["id"] == r["tool_use_id"])
        });
        if !answered {
            return Turn::Invalid(format!(
                "unexpected tool_use_id found in tool_result blocks: {}",
                r["tool_use_id"]
            ));
        }
    }
    Turn::Answered
}

/// A Gemini request's turn (a `functionResponse` must name a function called before).
pub fn gemini_turn(body: &Value) -> Turn {
    let declared = body["tools"].as_array().and_then(|t| {
        t.iter()
            .find_map(|t| t["functionDeclarations"].as_array().cloned())
    });
    let Some(tool) = first_tool(declared.as_ref(), |d| d["name"].as_str()) else {
        return Turn::Plain;
    };
    let contents = body["contents"].as_array().cloned().unwrap_or_default();
    let parts = |c: &Value| c["parts"].as_array().cloned().unwrap_or_default();
    let responses: Vec<Value> = contents
        .last()
        .map(parts)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.get("functionResponse").cloned())
        .collect();
    if responses.is_empty() {
        return Turn::Call(tool);
    }
    let called: Vec<Value> = contents
        .iter()
        .filter(|c| c["role"] == "model")
        .flat_map(parts)
        .filter_map(|p| p.get("functionCall").cloned())
        .collect();
    for r in &responses {
        if !called.iter().any(|c| c["name"] == r["name"]) {
            return Turn::Invalid(format!("function response {} answers no call", r["name"]));
        }
    }
    Turn::Answered
}
