#!/usr/bin/env python3
"""Slow-stream bench: a paced OpenAI upstream and a client that times every event.

  slow_stream.py serve PORT [EVENTS] [PACE_MS]
      POST /v1/chat/completions answers an SSE stream: a role chunk, EVENTS content
      chunks PACE_MS apart, a finish chunk, a usage chunk, [DONE]. Each content chunk's
      text is the wall-clock time (ns) at which it was written.
  slow_stream.py measure URL MODEL [KEY] [RUNS]
      Streams RUNS requests (one after another) and prints one line:
      SLOW events=N lost=N max_ms=… p50_ms=… p99_ms=… stalls=N
      where a stall is an event that reached the client more than 2 ms after the
      upstream wrote it (client and upstream share this machine's clock).
"""
import asyncio
import json
import socket
import sys
import time
from urllib.parse import urlsplit


def chunk(delta, finish=None, usage=None):
    c = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 1,
         "model": "gpt-4o-mini", "choices": [] if usage else
         [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        c["usage"] = usage
    return ("data: " + json.dumps(c, separators=(",", ":")) + "\n\n").encode()


async def serve(port, events, pace):
    async def handle(reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"cache-control: no-cache\r\nconnection: close\r\n\r\n")
            writer.write(chunk({"role": "assistant", "content": ""}))
            await writer.drain()
            start = time.monotonic()
            for i in range(events):
                await asyncio.sleep(max(0.0, start + (i + 1) * pace - time.monotonic()))
                writer.write(chunk({"content": f"{time.time_ns()} "}))
                await writer.drain()
            writer.write(chunk({}, finish="stop"))
            writer.write(chunk(None, usage={"prompt_tokens": 12, "completion_tokens": events,
                                            "total_tokens": 12 + events}))
            writer.write(b"data: [DONE]\n\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def dechunk(raw):
    """Undoes HTTP/1.1 chunked transfer coding on the bytes seen so far; returns the
    decoded prefix (a partial chunk at the end is left out)."""
    out, pos = bytearray(), 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out)
        size = int(raw[pos:eol].split(b";")[0], 16)
        if size == 0 or len(raw) < eol + 2 + size:
            return bytes(out)
        out += raw[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


def one_stream(url, model, key):
    u = urlsplit(url)
    body = json.dumps({"model": model, "stream": True, "max_tokens": 256,
                       "messages": [{"role": "user", "content": "count slowly"}]}).encode()
    req = (f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\nConnection: close\r\n"
           + (f"Authorization: Bearer {key}\r\n" if key else "") + "\r\n").encode() + body
    s = socket.create_connection((u.hostname, u.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(req)
    raw, head, chunked, seen, delays = b"", None, False, 0, []
    while True:
        data = s.recv(65536)
        now = time.time_ns()
        if not data:
            break
        raw += data
        if head is None:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                continue
            head, raw = raw[:end].decode("latin-1"), raw[end + 4:]
            status = head.split(" ", 2)[1]
            if status != "200":
                raise SystemExit(f"slow stream: HTTP {status} from {url}: {raw[:300]!r}")
            chunked = "transfer-encoding: chunked" in head.lower()
        body = dechunk(raw) if chunked else raw
        events = body.split(b"\n\n")[:-1]
        for e in events[seen:]:
            if not e.startswith(b"data: {"):
                continue
            c = json.loads(e[6:])
            for ch in c.get("choices", []):
                text = (ch.get("delta") or {}).get("content") or ""
                if text.strip().isdigit():
                    delays.append((now - int(text)) / 1e6)
        seen = len(events)
    s.close()
    return delays


def measure(url, model, key, runs, events):
    delays = []
    for _ in range(runs):
        delays += one_stream(url, model, key)
    delays.sort()
    lost = runs * events - len(delays)
    pct = lambda p: delays[min(len(delays) - 1, int(p * len(delays)))] if delays else float("nan")
    print(f"SLOW events={len(delays)} lost={lost} max_ms={max(delays, default=float('nan')):.3f} "
          f"p50_ms={pct(0.5):.3f} p99_ms={pct(0.99):.3f} stalls={sum(d > 2.0 for d in delays)}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        asyncio.run(serve(int(args[0]), int(args[1]) if len(args) > 1 else 64,
                          (float(args[2]) if len(args) > 2 else 20.0) / 1000))
    elif cmd == "measure":
        measure(args[0], args[1], args[2] if len(args) > 2 else "",
                int(args[3]) if len(args) > 3 else 3, 64)
    else:
        sys.exit(__doc__)
