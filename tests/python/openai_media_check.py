"""Drives the official `openai` Python SDK's file and audio endpoints against a running
Tollgate gateway: image edits (several images and a mask) and variations (multipart),
speech (audio bytes back), transcriptions and translations (multipart).

Environment: TOLLGATE_BASE_URL, TOLLGATE_KEY. Prints one line per check; a failed
check raises. The Rust test (tests/tests/openai_endpoints.rs) checks what each call
cost; keep the calls in step with it.
"""

import os

import openai

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
TRANSCRIPT = "Hello from the recording."


def check(name: str) -> None:
    print(f"ok: {name}", flush=True)


def main() -> None:
    base_url = os.environ["TOLLGATE_BASE_URL"].rstrip("/") + "/v1"
    client = openai.OpenAI(
        base_url=base_url, api_key=os.environ["TOLLGATE_KEY"], max_retries=0, timeout=30
    )

    # (1) An edit of two images with a mask, two results.
    edited = client.images.edit(
        model="gpt-image-1",
        image=[("a.png", PNG, "image/png"), ("b.png", PNG, "image/png")],
        mask=("mask.png", PNG, "image/png"),
        prompt="Add a hat",
        n=2,
    )
    assert len(edited.data) == 2 and edited.data[0].b64_json, f"edit {edited}"
    check("images.edit: two images and a mask in, two out")

    # (2) One variation.
    varied = client.images.create_variation(model="dall-e-2", image=("a.png", PNG, "image/png"))
    assert len(varied.data) == 1, f"variation {varied}"
    check("images.create_variation: one image")

    # (3) Speech: the audio bytes come back whole.
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello world")
    content = audio.content
    assert content.startswith(b"ID3") and len(content) == 2003, f"{len(content)} bytes"
    check(f"audio.speech: {len(content)} bytes of audio/mpeg")

    # (4) A transcription whose answer reports 7 seconds.
    t = client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"\x00" * 20000))
    assert t.text == TRANSCRIPT, f"transcription {t}"
    check("audio.transcriptions (json): text")

    # (5) verbose_json: a duration of 7.2 s.
    t = client.audio.transcriptions.create(
        model="whisper-1", file=("a.mp3", b"\x00" * 20000), response_format="verbose_json"
    )
    assert t.text == TRANSCRIPT and abs(t.duration - 7.2) < 1e-9, f"verbose {t}"
    check("audio.transcriptions (verbose_json): text and duration")

    # (6) A translation with no duration in its answer: 48 000 bytes are 3 s at 128 kbit/s.
    tr = client.audio.translations.create(model="whisper-1", file=("a.mp3", b"\x00" * 48000))
    assert tr.text == TRANSCRIPT, f"translation {tr}"
    check("audio.translations: text")

    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
