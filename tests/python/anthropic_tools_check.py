"""The official `anthropic` SDK runs a tool loop through Tollgate against a channel of
any type (TOLLGATE_MODEL picks it): a tool_use comes back, its tool_result goes in, an
answer comes back; once whole and once through the SDK's stream helper. Four calls are
charged, two of them streamed.
"""

import os

import anthropic

MODEL = os.environ["TOLLGATE_MODEL"]
EXPECTED = "Hello! How can I help?"
TOOLS = [{"name": "get_weather", "description": "The weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}]
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}


def check(name: str) -> None:
    print(f"ok: {name}", flush=True)


def tool_use(message):
    uses = [b for b in message.content if b.type == "tool_use"]
    assert message.stop_reason == "tool_use" and len(uses) == 1, f"{message}"
    assert uses[0].name == "get_weather" and uses[0].input == {"city": "Paris"}, f"{uses}"
    return uses[0]


def follow_up(message, use) -> list:
    return [QUESTION, {"role": "assistant", "content": message.content},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "21 degrees"}]}]


def text_of(message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def main() -> None:
    client = anthropic.Anthropic(base_url=os.environ["TOLLGATE_BASE_URL"].rstrip("/"),
                                 api_key=os.environ["TOLLGATE_KEY"], max_retries=0, timeout=30)

    m = client.messages.create(model=MODEL, max_tokens=256, tools=TOOLS, messages=[QUESTION])
    use = tool_use(m)
    check(f"a tool_use comes back: {use.id}")
    m2 = client.messages.create(model=MODEL, max_tokens=256, tools=TOOLS, messages=follow_up(m, use))
    assert text_of(m2) == EXPECTED and m2.stop_reason == "end_turn", f"{m2}"
    check("its tool_result goes in and the answer comes back")

    with client.messages.stream(model=MODEL, max_tokens=256, tools=TOOLS, messages=[QUESTION]) as s:
        m = s.get_final_message()
    use = tool_use(m)
    check("streamed: the helper assembles the tool_use input")
    with client.messages.stream(model=MODEL, max_tokens=256, tools=TOOLS,
                                messages=follow_up(m, use)) as s:
        m2 = s.get_final_message()
    assert text_of(m2) == EXPECTED, f"{m2}"
    check("streamed: the answer after the result")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
