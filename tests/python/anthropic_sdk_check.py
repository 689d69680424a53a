"""Drives the official `anthropic` Python SDK against a running Tollgate gateway.

Environment: TOLLGATE_BASE_URL (the gateway's root, e.g. http://127.0.0.1:PORT; the SDK
appends /v1/messages) and TOLLGATE_KEY (a customer's sk- key, which the SDK sends as
x-api-key). Prints one line per check; any failed check raises, so the interpreter exits
non-zero with the traceback.

Exactly three messages succeed (plain, raw response, stream); the Rust test that runs
this script checks the customer was charged for those three and nothing else, so keep
that count in step with SDK_CHARGED_CALLS in tests/tests/anthropic.rs.
"""

import os

import anthropic

MODEL = os.environ.get("TOLLGATE_MODEL", "claude-3-7-sonnet")
MESSAGES = [{"role": "user", "content": "Say hello"}]
EXPECTED = "Hello! How can I help?"


def check(name: str) -> None:
    print(f"ok: {name}", flush=True)


def text_of(message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def main() -> None:
    base_url = os.environ["TOLLGATE_BASE_URL"].rstrip("/")
    key = os.environ["TOLLGATE_KEY"]
    print(f"anthropic {anthropic.__version__} against {base_url}", flush=True)
    # No retries: every request the SDK makes is one the test counts and pays for.
    client = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0, timeout=30)

    # (a) A plain message, parsed into the SDK's types.
    message = client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert text_of(message) == EXPECTED, f"text {text_of(message)!r}"
    assert message.stop_reason == "end_turn", f"stop_reason {message.stop_reason!r}"
    assert message.usage.input_tokens == 12, f"usage {message.usage}"
    assert message.usage.output_tokens == 30, f"usage {message.usage}"
    check("messages.create: text and usage")

    # (a') The same through the raw response, to see the gateway's headers.
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    gen_id = raw.headers.get("x-generation-id")
    assert gen_id is not None and gen_id.startswith("gen-"), f"x-generation-id {gen_id!r}"
    parsed = raw.parse()
    assert text_of(parsed) == EXPECTED, f"text {text_of(parsed)!r}"
    check(f"with_raw_response: x-generation-id {gen_id}")

    # (b) Streaming with the SDK's helper: the text deltas and the final message agree.
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == EXPECTED, f"text_stream {streamed!r}"
    assert text_of(final) == EXPECTED, f"final text {text_of(final)!r}"
    assert final.stop_reason == "end_turn", f"stop_reason {final.stop_reason!r}"
    assert final.usage.input_tokens == 12, f"usage {final.usage}"
    assert final.usage.output_tokens == 30, f"usage {final.usage}"
    check("messages.stream: text_stream and get_final_message match, usage 12/30")

    # (b') Counting tokens is free (the Rust test checks nothing more was charged).
    counted = client.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert counted.input_tokens > 0, f"count_tokens {counted}"
    check(f"messages.count_tokens: {counted.input_tokens} input tokens")

    # (c) A wrong key is the SDK's AuthenticationError, status 401.
    bad = anthropic.Anthropic(
        base_url=base_url, api_key="sk-not-a-real-key-0000", max_retries=0, timeout=30
    )
    try:
        bad.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    except anthropic.AuthenticationError as e:
        assert e.status_code == 401, f"status {e.status_code}"
        assert isinstance(e.body, dict) and e.body.get("type") == "error", f"body {e.body!r}"
        check(f"bad key: AuthenticationError {e.status_code}")
    else:
        raise AssertionError("a bad key was accepted")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
