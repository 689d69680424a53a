#!/usr/bin/env bash
# Tollgate benchmark: a mock OpenAI upstream (nginx, fixed answers) called directly
# and through the gateway, under wrk. See bench/README.md.
#
#   bash bench/run.sh                 # full run (builds the gateway in release)
#   bash bench/run.sh --direct-only   # only the mock, no gateway (checks the harness)
#
# Env: BENCH_SECONDS (10) per measured run, BENCH_WARMUP (1) seconds of warm-up before
# each run, SKIP_BUILD=1 to use an existing binary, GATEWAY_BIN (target/release/gateway).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
SECS=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-1}
GW_BIN=${GATEWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/gateway}
DIRECT_ONLY=0
case "${1:-}" in
  "") ;;
  --direct-only) DIRECT_ONLY=1 ;;
  -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--direct-only]" >&2; exit 2 ;;
esac

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
install_tools() {
  local want=()
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || want+=(nginx)
  command -v wrk >/dev/null || want+=(wrk)
  [[ ${#want[@]} -eq 0 ]] && return 0
  log "installing ${want[*]} (apt)"
  # Keep apt from starting a system nginx on :80: a policy-rc.d that says "no",
  # only for the duration of the install and only if there is none already.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; made_policy=1; fi
  local ok=0 first=1
  while :; do
    for ng in nginx-light nginx; do
      local pkgs=("${want[@]/#nginx/$ng}")
      if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null; then ok=1; break 2; fi
    done
    [[ $first -eq 1 ]] || break
    first=0; apt-get update -q >/dev/null
  done
  if [[ $made_policy -eq 1 ]]; then rm -f "$policy"; fi
  [[ $ok -eq 1 ]] || die "could not install ${want[*]}"
}
install_tools
export PATH=$PATH:/usr/sbin
command -v python3 >/dev/null || die "python3 is required"

# ---------------------------------------------------------------- temp dir + cleanup
T=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
chmod 755 "$T"
NGINX_PID="" GW_PID="" SAMPLER_PID=""
cleanup() {
  local rc=$?
  for pid in "$SAMPLER_PID" "$GW_PID" "$NGINX_PID"; do
    if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  done
  rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------- mock upstream (nginx)
NGINX_PORT=$(free_port)
MOCK="http://127.0.0.1:$NGINX_PORT"
mkdir -p "$T/nginx-tmp"
python3 - "$BENCH_DIR/mock" "$T" "$NGINX_PORT" >"$T/nginx.conf" <<'PY'
import sys
mock, tmp, port = sys.argv[1:]
def quoted(name, strip):
    s = open(f"{mock}/{name}", encoding="utf-8").read()
    s = s.strip() if strip else s
    assert "$" not in s, f"{name}: nginx would expand '$'"
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
print(f"""
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path {tmp}/nginx-tmp/body;
  proxy_temp_path {tmp}/nginx-tmp/proxy;
  fastcgi_temp_path {tmp}/nginx-tmp/fastcgi;
  uwsgi_temp_path {tmp}/nginx-tmp/uwsgi;
  scgi_temp_path {tmp}/nginx-tmp/scgi;
  server {{
    listen 127.0.0.1:{port};
    location = /v1/chat/completions {{
      default_type application/json;
      return 200 {quoted("chat_completion.json", True)};
    }}
    location = /stream/v1/chat/completions {{
      default_type text/event-stream;
      add_header Cache-Control no-cache;
      return 200 {quoted("chat_completion_stream.sse", False)};
    }}
    location / {{ return 404; }}
  }}
}}""")
PY
nginx -e "$T/nginx-error.log" -p "$T/" -c "$T/nginx.conf" &
NGINX_PID=$!
for _ in $(seq 50); do curl -fs -o /dev/null -X POST "$MOCK/v1/chat/completions" && break; sleep 0.1; done
kill -0 "$NGINX_PID" 2>/dev/null || die "nginx did not start: $(cat "$T/nginx-error.log" 2>/dev/null)"

# check_answer URL BODYFILE [KEY]: one request; the answer must be a chat.completion
# (or, for a stream, an SSE sequence of JSON chunks ending in [DONE]) with usage.
check_answer() {
  local url=$1 body=$2 key=${3:-} auth=()
  if [[ -n $key ]]; then auth=(-H "Authorization: Bearer $key"); fi
  curl -sS -N -D "$T/check.h" -o "$T/check.b" -X POST -H 'Content-Type: application/json' \
    "${auth[@]}" --data-binary "@$body" "$url" || die "request to $url failed"
  python3 - "$T/check.h" "$T/check.b" "$url" <<'PY' || die "bad answer from $url"
import json, sys
head, body, url = open(sys.argv[1]).read(), open(sys.argv[2]).read(), sys.argv[3]
status = head.split("\r\n", 1)[0]
assert " 200" in status, f"{status}\n{body[:500]}"
if "text/event-stream" in head.lower():
    events = [e for e in body.split("\n\n") if e.strip()]
    assert events and events[-1].strip() == "data: [DONE]", "stream does not end in data: [DONE]"
    chunks = []
    for e in events[:-1]:
        for line in e.splitlines():
            if line.startswith("data:"):
                chunks.append(json.loads(line[5:].strip()))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage, "no usage chunk"
    print(f"   ok {url}: SSE, {len(chunks)} chunks + [DONE], text={text!r}, usage={usage[-1]['total_tokens']}", file=sys.stderr)
else:
    d = json.loads(body)
    assert d["object"] == "chat.completion" and d["usage"]["total_tokens"] == 42, body[:500]
    print(f"   ok {url}: JSON, usage={d['usage']['total_tokens']}", file=sys.stderr)
PY
  if [[ -n $key ]] && ! grep -qi '^x-generation-id:' "$T/check.h"; then
    log "warning: no X-Generation-Id header from $url"
  fi
}
log "mock upstream (nginx) on $MOCK"
check_answer "$MOCK/v1/chat/completions" "$BENCH_DIR/requests/chat.json"
check_answer "$MOCK/stream/v1/chat/completions" "$BENCH_DIR/requests/chat_stream.json"

# ---------------------------------------------------------------- gateway
if [[ $DIRECT_ONLY -eq 0 ]]; then
  if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "cargo build --release -p gateway"
    (cd "$ROOT" && cargo build --release -p gateway)
  fi
  [[ -x $GW_BIN ]] || die "no gateway binary at $GW_BIN"
  GW_PORT=$(free_port)
  GW="http://127.0.0.1:$GW_PORT"
  TOLLGATE_ADDR=127.0.0.1:$GW_PORT \
  DATABASE_URL="sqlite://$T/bench.db?mode=rwc" \
  TOLLGATE_ROOT_PASSWORD=benchpass \
  TOLLGATE_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))') \
  RUST_LOG=warn \
    "$GW_BIN" >"$T/gateway.log" 2>&1 &
  GW_PID=$!
  for _ in $(seq 300); do
    curl -fs -o /dev/null "$GW/healthz" && break
    kill -0 "$GW_PID" 2>/dev/null || die "gateway exited: $(tail -20 "$T/gateway.log")"
    sleep 0.1
  done
  curl -fs -o /dev/null "$GW/healthz" || die "gateway /healthz not 200 after 30 s"
  log "gateway on $GW (pid $GW_PID)"

  TOKEN=""
  # api METHOD PATH [JSON]: admin API call; prints the body, dies on non-2xx.
  api() {
    local args=(-sS -X "$1" -w '\n%{http_code}' -H 'Content-Type: application/json')
    if [[ -n $TOKEN ]]; then args+=(-H "Authorization: Bearer $TOKEN"); fi
    if [[ $# -ge 3 ]]; then args+=(--data "$3"); fi
    local out code
    out=$(curl "${args[@]}" "$GW/api$2") || die "$1 /api$2: curl failed"
    code=${out##*$'\n'}; out=${out%$'\n'*}
    [[ $code == 2?? ]] || die "$1 /api$2 -> HTTP $code: $out"
    printf '%s' "$out"
  }
  field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

  TOKEN=$(api POST /auth/login '{"username":"root","password":"benchpass"}' | field token)
  ROOT_ID=$(api GET /me | field id)
  api POST "/users/$ROOT_ID/credits" '{"amount": 1000000, "note": "bench"}' >/dev/null
  api POST /channels "{\"name\":\"mock\",\"type\":\"openai\",\"base_url\":\"$MOCK\",\"keys\":[\"sk-upstream\"],\"models\":[\"gpt-4o-mini\"]}" >/dev/null
  api POST /channels "{\"name\":\"mock-stream\",\"type\":\"openai\",\"base_url\":\"$MOCK/stream\",\"keys\":[\"sk-upstream\"],\"models\":[\"gpt-4o-mini-stream\"],\"model_mapping\":{\"gpt-4o-mini-stream\":\"gpt-4o-mini\"}}" >/dev/null
  api PUT /pricing/models/gpt-4o-mini '{"input":0.15,"output":0.6}' >/dev/null
  api PUT /pricing/models/gpt-4o-mini-stream '{"input":0.15,"output":0.6}' >/dev/null
  SK=$(api POST /keys '{"name":"bench"}' | field key)
  BALANCE0=$(api GET /me | field balance)
  log "set up: root id $ROOT_ID, 2 channels, 2 prices, key ${SK:0:7}…; balance $BALANCE0"

  check_answer "$GW/v1/chat/completions" "$BENCH_DIR/requests/chat.json" "$SK"
  check_answer "$GW/v1/chat/completions" "$BENCH_DIR/requests/chat_stream.json" "$SK"

  rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || true; }
  sleep 1
  RSS_IDLE=$(rss_kb)
  echo "${RSS_IDLE:-0}" >"$T/rss_peak"
  (
    peak=${RSS_IDLE:-0}
    while kill -0 "$GW_PID" 2>/dev/null; do
      v=$(rss_kb); v=${v:-0}
      if (( v > peak )); then peak=$v; echo "$peak" >"$T/rss_peak"; fi
      sleep 0.2
    done
  ) &
  SAMPLER_PID=$!
fi

# ---------------------------------------------------------------- load
# bench NAME URL BODY KEY CONNS THREADS: warm up, then one measured wrk run.
bench() {
  local name=$1 url=$2 body=$3 key=$4 conns=$5 threads=$6 line
  log "$name: wrk -c$conns -t$threads -d${SECS}s $url"
  BENCH_BODY=$body BENCH_AUTH=$key wrk -c"$conns" -t"$threads" -d"${WARMUP}s" -s "$BENCH_DIR/post.lua" "$url" >/dev/null
  BENCH_BODY=$body BENCH_AUTH=$key wrk -c"$conns" -t"$threads" -d"${SECS}s" -s "$BENCH_DIR/post.lua" "$url" >"$T/wrk-$name.txt"
  line=$(grep '^BENCH ' "$T/wrk-$name.txt") || die "no result from wrk: $(cat "$T/wrk-$name.txt")"
  echo "$name ${line#BENCH }" >>"$T/results"
  echo "   ${line#BENCH }" >&2
}
: >"$T/results"
NS=$BENCH_DIR/requests/chat.json
ST=$BENCH_DIR/requests/chat_stream.json
bench direct_ns32 "$MOCK/v1/chat/completions" "$NS" "" 32 2
[[ $DIRECT_ONLY -eq 1 ]] || bench gateway_ns32 "$GW/v1/chat/completions" "$NS" "$SK" 32 2
bench direct_st32 "$MOCK/stream/v1/chat/completions" "$ST" "" 32 2
[[ $DIRECT_ONLY -eq 1 ]] || bench gateway_st32 "$GW/v1/chat/completions" "$ST" "$SK" 32 2
bench direct_ns1 "$MOCK/v1/chat/completions" "$NS" "" 1 1
[[ $DIRECT_ONLY -eq 1 ]] || bench gateway_ns1 "$GW/v1/chat/completions" "$NS" "$SK" 1 1

RSS_PEAK=""
if [[ $DIRECT_ONLY -eq 0 ]]; then
  kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""
  RSS_PEAK=$(cat "$T/rss_peak")
  sleep 2  # charges are visible within 2 s (API.md §3)
  BALANCE1=$(api GET /me | field balance)
  log "billing: root balance $BALANCE0 -> $BALANCE1 credits"
fi

# ---------------------------------------------------------------- summary
python3 - "$T/results" "$DIRECT_ONLY" "${RSS_IDLE:-}" "$RSS_PEAK" "$SECS" <<'PY'
import sys
path, direct_only, rss_idle, rss_peak, secs = sys.argv[1:]
direct_only = direct_only == "1"
r = {}
for line in open(path):
    name, *kv = line.split()
    r[name] = {k: float(v) for k, v in (x.split("=") for x in kv)}

def verdict(ok):
    return "" if ok is None else ("PASS" if ok else "FAIL")

print(f"\nTollgate bench ({secs} s per run; wrk, nginx and gateway share this machine's cores)\n")
print(f"{'throughput (req/s)':<28}{'direct':>11}{'gateway':>11}{'ratio':>8}  {'target':<9}")
for key, label, target in (("ns32", "non-stream, 32 conns", 0.30), ("st32", "stream, 32 conns", 0.20)):
    d, g = r[f"direct_{key}"], r.get(f"gateway_{key}")
    if g is None:
        print(f"{label:<28}{d['rps']:>11.0f}{'-':>11}{'-':>8}  >= {target:.2f}")
    else:
        ratio = g["rps"] / d["rps"]
        print(f"{label:<28}{d['rps']:>11.0f}{g['rps']:>11.0f}{ratio:>8.3f}  >= {target:.2f}   {verdict(ratio >= target)}")

print(f"\n{'latency, 1 conn (ms)':<28}{'direct':>11}{'gateway':>11}{'added':>8}  {'target':<9}")
d, g = r["direct_ns1"], r.get("gateway_ns1")
for pct, target in (("p50", 0.1), ("p99", 0.5)):
    dm = d[f"{pct}_us"] / 1000
    if g is None:
        print(f"{pct:<28}{dm:>11.3f}{'-':>11}{'-':>8}  <= {target}")
    else:
        gm = g[f"{pct}_us"] / 1000
        print(f"{pct:<28}{dm:>11.3f}{gm:>11.3f}{gm - dm:>8.3f}  <= {target:<6}   {verdict(gm - dm <= target)}")

if not direct_only:
    print(f"\n{'gateway memory (MiB)':<28}{'RSS':>11}{'':>19}  {'target':<9}")
    for label, kb, target in (("idle, before load", rss_idle, 12), ("peak, during load", rss_peak, 32)):
        mib = float(kb or 0) / 1024
        print(f"{label:<28}{mib:>11.1f}{'':>19}  <= {target:<6}   {verdict(mib <= target)}")

bad = [f"{n}: {int(v['non2xx'])} non-2xx, {int(v['sockerr'])} socket errors"
       for n, v in r.items() if v["non2xx"] or v["sockerr"]]
if bad:
    print("\nWARNING: errors during load; the numbers above are not valid:\n  " + "\n  ".join(bad))
print()
PY
