"""Drives the official `openai` Python SDK's other JSON endpoints against a running
Tollgate gateway: legacy completions, embeddings, moderations, image generation, and DeepSeek's FIM
completions at /beta.

Environment: TOLLGATE_BASE_URL, TOLLGATE_KEY. Prints one line per check; a failed check
raises. The Rust test (tests/tests/openai_endpoints.rs) checks each call's cost.
"""

import os

import openai


def check(name: str) -> None:
    print(f"ok: {name}", flush=True)


def main() -> None:
    base_url = os.environ["TOLLGATE_BASE_URL"].rstrip("/") + "/v1"
    client = openai.OpenAI(
        base_url=base_url, api_key=os.environ["TOLLGATE_KEY"], max_retries=0, timeout=30
    )

    c = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", max_tokens=16)
    assert c.choices[0].text == "Hello there" and c.usage.completion_tokens == 7, f"{c}"
    check("completions.create: text and usage")

    # The SDK asks for base64 by default and decodes what it gets.
    e = client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert len(e.data[0].embedding) == 3 and e.usage.prompt_tokens == 8, f"{e}"
    check("embeddings.create: a vector and usage")

    m = client.moderations.create(model="omni-moderation-latest", input="I want to hug everyone")
    assert m.results[0].flagged is False, f"{m}"
    check("moderations.create: not flagged")

    i = client.images.generate(model="dall-e-3", prompt="a cat", n=2, size="1024x1024")
    assert len(i.data) == 2 and i.data[0].url, f"{i}"
    check("images.generate: two images")

    # DeepSeek's FIM: the same SDK with its base URL at /beta.
    fim = openai.OpenAI(base_url=os.environ["TOLLGATE_BASE_URL"].rstrip("/") + "/beta",
                        api_key=os.environ["TOLLGATE_KEY"], max_retries=0, timeout=30)
    f = fim.completions.create(model="deepseek-chat", prompt="def fib(a):",
                               suffix="    return fib(a-1) + fib(a-2)", max_tokens=64)
    assert f.choices[0].text == "Hello there", f"{f}"
    check("FIM completions.create at /beta: text")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
