"""The official `openai` SDK runs a tool loop through Tollgate against a channel of any
type (TOLLGATE_MODEL picks it): a call comes back, its result goes in, an answer comes
back; once whole and once streamed through the SDK's stream helper. Four calls are
charged, two of them streamed (tests/tests/conversion.rs counts on that).
"""

import json
import os

import openai

MODEL = os.environ["TOLLGATE_MODEL"]
EXPECTED = "Hello! How can I help?"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}


def check(name: str) -> None:
    print(f"ok: {name}", flush=True)


def follow_up(call) -> list:
    return [
        QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": call.id, "type": "function",
            "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})},
    ]


def main() -> None:
    client = openai.OpenAI(base_url=os.environ["TOLLGATE_BASE_URL"].rstrip("/") + "/v1",
                           api_key=os.environ["TOLLGATE_KEY"], max_retries=0, timeout=30)

    r = client.chat.completions.create(model=MODEL, messages=[QUESTION], tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls", f"{r}"
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather", f"{call}"
    assert json.loads(call.function.arguments) == {"city": "Paris"}, f"{call}"
    check(f"a tool call comes back: {call.id}")
    r = client.chat.completions.create(model=MODEL, messages=follow_up(call), tools=TOOLS)
    assert r.choices[0].message.content == EXPECTED, f"{r}"
    check("its result goes in and the answer comes back")

    with client.chat.completions.stream(model=MODEL, messages=[QUESTION], tools=TOOLS) as s:
        final = s.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls", f"{final}"
    assert json.loads(call.function.arguments) == {"city": "Paris"}, f"{call}"
    check("streamed: the helper assembles the tool call")
    with client.chat.completions.stream(model=MODEL, messages=follow_up(call), tools=TOOLS) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == EXPECTED, f"{final}"
    check("streamed: the answer after the result")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
