"""Drives the official `openai` Python SDK against a running Tollgate gateway.

Environment: TOLLGATE_BASE_URL (the gateway's root, e.g. http://127.0.0.1:PORT) and
TOLLGATE_KEY (a customer's sk- key). Prints one line per check; any failed check raises,
so the interpreter exits non-zero with the traceback.

Exactly three chat completions succeed (plain, raw response, stream); the Rust test
that runs this script checks the customer was charged for those three and nothing else,
so keep that count in step with CHARGED_CHAT_CALLS in tests/tests/openai_sdk.rs.
"""

import os

import openai

MODEL = os.environ.get("TOLLGATE_MODEL", "gpt-4o-mini")
MESSAGES = [{"role": "user", "content": "Say hello"}]
EXPECTED = "Hello! How can I help?"


def check(name: str) -> None:
    print(f"ok: {name}", flush=True)


def main() -> None:
    base_url = os.environ["TOLLGATE_BASE_URL"].rstrip("/") + "/v1"
    key = os.environ["TOLLGATE_KEY"]
    print(f"openai {openai.__version__} against {base_url}", flush=True)
    # No retries: every request the SDK makes is one the test counts and pays for.
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)

    # (a) A plain chat completion, parsed into the SDK's types.
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    content = completion.choices[0].message.content
    assert content == EXPECTED, f"content {content!r}"
    assert completion.usage is not None, "no usage"
    assert completion.usage.completion_tokens == 30, f"usage {completion.usage}"
    assert completion.usage.prompt_tokens == 12, f"usage {completion.usage}"
    check("chat.completions.create: content and usage")

    # (a') The same through the raw response, to see the gateway's headers.
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    gen_id = raw.headers.get("x-generation-id")
    assert gen_id is not None and gen_id.startswith("gen-"), f"x-generation-id {gen_id!r}"
    parsed = raw.parse()
    assert parsed.choices[0].message.content == EXPECTED, f"content {parsed.choices[0].message.content!r}"
    check(f"with_raw_response: x-generation-id {gen_id}")

    # (b) Streaming: the deltas add up to the same answer.
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    pieces = []
    chunks = 0
    for chunk in stream:
        chunks += 1
        if not chunk.choices:
            continue
        piece = chunk.choices[0].delta.content
        if piece:
            pieces.append(piece)
    streamed = "".join(pieces)
    assert streamed == EXPECTED, f"streamed {streamed!r} from {chunks} chunks"
    check(f"stream=True: {chunks} chunks, content matches")

    # (c) The model list the key may call.
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids, f"models {ids}"
    check(f"models.list: {len(ids)} models, {MODEL} among them")

    # (d) A wrong key is the SDK's AuthenticationError, status 401.
    bad = openai.OpenAI(base_url=base_url, api_key="sk-not-a-real-key-0000", max_retries=0, timeout=30)
    try:
        bad.chat.completions.create(model=MODEL, messages=MESSAGES)
    except openai.AuthenticationError as e:
        assert e.status_code == 401, f"status {e.status_code}"
        check(f"bad key: AuthenticationError {e.status_code}")
    else:
        raise AssertionError("a bad key was accepted")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
