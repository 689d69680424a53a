"""Drives the official `google-genai` Python SDK against a running Tollgate gateway.

Environment: TOLLGATE_BASE_URL (the gateway's root, e.g. http://127.0.0.1:PORT; the SDK
appends /v1beta/models/...) and TOLLGATE_KEY (a customer's sk- key, which the SDK sends
as x-goog-api-key). Prints one line per check; any failed check raises, so the
interpreter exits non-zero with the traceback.

Exactly two generations succeed (generate_content, generate_content_stream); the Rust
test that runs this script checks the customer was charged for those two and nothing
else, so keep that count in step with SDK_CHARGED_CALLS in tests/tests/gemini.rs. The
model list and the bad-key call are free.
"""

import os

from google import genai
from google.genai import errors, types

MODEL = os.environ.get("TOLLGATE_MODEL", "gemini-2.0-flash")
PROMPT = "Say hello"
EXPECTED = "Hello! How can I help?"


def check(name: str) -> None:
    print(f"ok: {name}", flush=True)


def client_for(base_url: str, key: str) -> genai.Client:
    # Only the base URL changes: the SDK's default API version (v1 for the Gemini API)
    # is served too. No retry options: the SDK then tries each request once, and every
    # request it makes is one the test counts and pays for.
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(base_url=base_url, timeout=30_000),
    )


def header(response, name: str):
    http = getattr(response, "sdk_http_response", None)
    if http is None or not http.headers:
        return None
    for k, v in http.headers.items():
        if k.lower() == name:
            return v
    return None


def main() -> None:
    base_url = os.environ["TOLLGATE_BASE_URL"].rstrip("/") + "/"
    key = os.environ["TOLLGATE_KEY"]
    print(f"google-genai {genai.__version__} against {base_url}", flush=True)
    client = client_for(base_url, key)

    # (a) A plain generation, parsed into the SDK's types.
    response = client.models.generate_content(model=MODEL, contents=PROMPT)
    assert response.text == EXPECTED, f"text {response.text!r}"
    usage = response.usage_metadata
    assert usage is not None, "no usage_metadata"
    assert usage.prompt_token_count == 12, f"usage {usage}"
    assert usage.candidates_token_count == 30, f"usage {usage}"
    assert usage.total_token_count == 42, f"usage {usage}"
    assert response.candidates[0].finish_reason == types.FinishReason.STOP, (
        f"finish_reason {response.candidates[0].finish_reason!r}"
    )
    gen_id = header(response, "x-generation-id")
    assert gen_id is not None and gen_id.startswith("gen-"), f"x-generation-id {gen_id!r}"
    check(f"generate_content: text, usage 12/30, x-generation-id {gen_id}")

    # (b) Streaming: the pieces concatenate to the answer; the last chunk has the usage.
    pieces = []
    last_usage = None
    for chunk in client.models.generate_content_stream(model=MODEL, contents=PROMPT):
        if chunk.text:
            pieces.append(chunk.text)
        if chunk.usage_metadata is not None:
            last_usage = chunk.usage_metadata
    streamed = "".join(pieces)
    assert streamed == EXPECTED, f"streamed {streamed!r} from {pieces!r}"
    assert len(pieces) > 1, f"one piece only: {pieces!r}"
    assert last_usage is not None, "no usage_metadata in the stream"
    assert last_usage.prompt_token_count == 12, f"usage {last_usage}"
    assert last_usage.candidates_token_count == 30, f"usage {last_usage}"
    check(f"generate_content_stream: {len(pieces)} pieces, usage 12/30")

    # (b') Counting tokens is free.
    counted = client.models.count_tokens(model=MODEL, contents=PROMPT)
    assert counted.total_tokens and counted.total_tokens > 0, f"count_tokens {counted}"
    check(f"models.count_tokens: {counted.total_tokens}")

    # (c) The model list: Google's shape, the served model among them. Free.
    names = [m.name for m in client.models.list()]
    assert f"models/{MODEL}" in names or MODEL in names, f"models {names!r}"
    check(f"models.list: {len(names)} models, {MODEL} among them")

    # (d) A wrong key is an APIError (ClientError) with a 4xx code and Google's fields.
    bad = client_for(base_url, "sk-not-a-real-key-0000")
    try:
        bad.models.generate_content(model=MODEL, contents=PROMPT)
    except errors.ClientError as e:
        assert e.code in (400, 401, 403), f"code {e.code}"
        assert e.status, f"no status in {e.details!r}"
        assert e.message, f"no message in {e.details!r}"
        check(f"bad key: ClientError {e.code} {e.status}: {e.message}")
    else:
        raise AssertionError("a bad key was accepted")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
