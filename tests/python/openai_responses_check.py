"""Drives the official `openai` Python SDK's Responses API against a running Tollgate
gateway, whatever the channel behind the model speaks (OpenAI natively; Anthropic and
Gemini by conversion through chat).

Environment: TOLLGATE_BASE_URL (the gateway's root), TOLLGATE_KEY (a customer's sk- key)
and TOLLGATE_MODEL. Prints one line per check; a failed check raises.

Exactly three responses succeed (plain, streamed events, the stream helper); two of them
stream. The Rust test that runs this script (tests/tests/conversion.rs) counts on that.
"""

import os

import openai

MODEL = os.environ["TOLLGATE_MODEL"]
EXPECTED = "Hello! How can I help?"


def check(name: str) -> None:
    print(f"ok: {name}", flush=True)


def main() -> None:
    base_url = os.environ["TOLLGATE_BASE_URL"].rstrip("/") + "/v1"
    client = openai.OpenAI(
        base_url=base_url, api_key=os.environ["TOLLGATE_KEY"], max_retries=0, timeout=30
    )
    print(f"openai {openai.__version__} responses against {base_url}, model {MODEL}", flush=True)

    # (a) A plain response.
    response = client.responses.create(
        model=MODEL, instructions="Be brief.", input="Say hello", max_output_tokens=64
    )
    assert response.output_text == EXPECTED, f"output_text {response.output_text!r}"
    assert response.status == "completed", f"status {response.status!r}"
    assert response.usage.input_tokens == 12, f"usage {response.usage}"
    assert response.usage.output_tokens == 30, f"usage {response.usage}"
    check("responses.create: output_text, status and usage")

    # (b) Streamed events: text deltas, then response.completed with the usage.
    deltas, kinds, completed = [], [], None
    for event in client.responses.create(model=MODEL, input="Say hello", stream=True):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.completed":
            completed = event.response
    assert kinds[0] == "response.created", f"first event {kinds[0]}"
    assert kinds[-1] == "response.completed", f"last event {kinds[-1]}"
    assert "".join(deltas) == EXPECTED, f"deltas {''.join(deltas)!r}"
    assert completed.usage.output_tokens == 30, f"usage {completed.usage}"
    assert completed.output_text == EXPECTED, f"final {completed.output_text!r}"
    check(f"responses.create(stream=True): {len(kinds)} events, text and usage")

    # (c) The SDK's stream helper, which rebuilds the response from the events.
    with client.responses.stream(model=MODEL, input="Say hello") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == EXPECTED, f"helper text {text!r}"
    assert final.output_text == EXPECTED, f"helper final {final.output_text!r}"
    check("responses.stream: get_final_response matches")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
