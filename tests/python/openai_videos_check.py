"""Drives the official `openai` Python SDK's videos API against a running Tollgate
gateway whose `sora-2` and `sora-fail` models are served by a mock Sora upstream:
create_and_poll (the SDK's own poller), retrieve, download_content (the video and its
thumbnail), list, remix, delete, and a video that fails.

Environment: TOLLGATE_BASE_URL, TOLLGATE_KEY. Prints one line per check; a failed
check raises. The Rust test (tests/tests/videos_sdk.rs) checks what each call cost;
keep the calls in step with it.
"""

import os
import warnings

import openai

# The SDK marks its videos API deprecated (OpenAI's own Sora service); the shape is
# what clients of every video model use, and what this checks.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def check(name: str) -> None:
    print(f"ok: {name}", flush=True)


def main() -> None:
    base_url = os.environ["TOLLGATE_BASE_URL"].rstrip("/") + "/v1"
    client = openai.OpenAI(
        base_url=base_url, api_key=os.environ["TOLLGATE_KEY"], max_retries=0, timeout=30
    )

    # (1) An 8-second video, polled to the end by the SDK itself.
    video = client.videos.create_and_poll(
        model="sora-2", prompt="A calico cat playing a piano on stage", seconds="8"
    )
    assert video.status == "completed", f"create_and_poll {video}"
    assert video.id.startswith("task_") and video.progress == 100, f"{video}"
    assert video.seconds == "8", f"{video}"
    check("videos.create_and_poll: completed")

    # (2) Read back, and its bytes.
    again = client.videos.retrieve(video.id)
    assert again.id == video.id and again.status == "completed", f"{again}"
    content = client.videos.download_content(video.id)
    data = content.read()
    assert len(data) == 1000 and data[:4] == bytes([0, 1, 2, 3]), f"{len(data)} bytes"
    thumb = client.videos.download_content(video.id, variant="thumbnail").read()
    assert thumb.startswith(b"RIFF"), thumb[:16]
    check("videos.retrieve and download_content (video, thumbnail)")

    # (3) A remix of it, 8 seconds again.
    remix = client.videos.remix(video.id, prompt="The same, in winter")
    assert remix.remixed_from_video_id == video.id, f"{remix}"
    remix = client.videos.poll(remix.id)
    assert remix.status == "completed", f"{remix}"
    check("videos.remix: completed")

    # (4) One that fails: the SDK returns it, failed, with the reason.
    failed = client.videos.create_and_poll(model="sora-fail", prompt="Something forbidden")
    assert failed.status == "failed", f"{failed}"
    assert failed.error is not None and failed.error.code == "moderation_blocked", f"{failed}"
    check("videos.create_and_poll: failed, with its error")

    # (5) The list, newest first, then a deletion.
    listed = [v.id for v in client.videos.list(limit=10)]
    assert listed == [failed.id, remix.id, video.id], f"{listed}"
    deleted = client.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id, f"{deleted}"
    try:
        client.videos.retrieve(video.id)
        raise AssertionError("a deleted video was still readable")
    except openai.NotFoundError:
        pass
    check("videos.list and videos.delete")

    # (6) A model nobody serves.
    try:
        client.videos.create(model="no-such-video-model", prompt="x")
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError:
        pass
    check("videos.create: unknown model is 404")
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
