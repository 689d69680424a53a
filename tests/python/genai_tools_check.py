"""The official `google-genai` SDK runs a function-calling loop through Tollgate against
a channel of any type (TOLLGATE_MODEL picks it): a function call comes back, its
response goes in, an answer comes back; once whole and once streamed. Four calls are
charged, two of them streamed.
"""

import os

from google import genai
from google.genai import types

MODEL = os.environ["TOLLGATE_MODEL"]
EXPECTED = "Hello! How can I help?"


def check(name: str) -> None:
    print(f"ok: {name}", flush=True)


def main() -> None:
    client = genai.Client(
        api_key=os.environ["TOLLGATE_KEY"],
        http_options=types.HttpOptions(base_url=os.environ["TOLLGATE_BASE_URL"].rstrip("/") + "/",
                                       timeout=30_000),
    )
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(
        name="get_weather", description="The weather in a city",
        parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")},
                                required=["city"]))])
    config = types.GenerateContentConfig(
        tools=[tool],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    question = types.Content(role="user", parts=[types.Part(text="What is the weather in Paris?")])

    def follow_up(model_turn, call):
        answer = types.Part.from_function_response(name=call.name, response={"temp_c": 21})
        return [question, model_turn, types.Content(role="user", parts=[answer])]

    r = client.models.generate_content(model=MODEL, contents=[question], config=config)
    call = r.function_calls[0]
    assert call.name == "get_weather" and call.args == {"city": "Paris"}, f"{r}"
    check("a function call comes back")
    r2 = client.models.generate_content(
        model=MODEL, contents=follow_up(r.candidates[0].content, call), config=config)
    assert r2.text == EXPECTED, f"{r2}"
    check("its response goes in and the answer comes back")

    calls, turn = [], None
    for chunk in client.models.generate_content_stream(model=MODEL, contents=[question], config=config):
        if chunk.function_calls:
            calls.extend(chunk.function_calls)
            turn = chunk.candidates[0].content
    assert len(calls) == 1 and calls[0].args == {"city": "Paris"}, f"{calls}"
    check("streamed: one whole function call")
    text = "".join(c.text or "" for c in client.models.generate_content_stream(
        model=MODEL, contents=follow_up(turn, calls[0]), config=config))
    assert text == EXPECTED, f"{text!r}"
    check("streamed: the answer after the response")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
