#!/usr/bin/env bash
# Tollgate benchmark: a mock OpenAI upstream (nginx, fixed answers) called directly
# and through the gateway, under wrk. See bench/README.md.
#
#   bash bench/run.sh                     # full run on SQLite + in-process (builds release)
#   bash bench/run.sh --backend postgres  # the same on Postgres + Redis (production setup)
#   bash bench/run.sh --direct-only       # only the mock, no gateway (checks the harness)
#   bash bench/run.sh --serve             # set up, print the addresses and key, keep serving
#                                         # until interrupted (for perf, strace, wrk by hand)
#
# Env: BENCH_SECONDS (10) per measured run, BENCH_WARMUP (1) seconds of warm-up before
# each run, SKIP_BUILD=1 to use an existing binary, GATEWAY_BIN (target/release/gateway),
# PG_ADMIN_URL and BENCH_REDIS_URL for --backend postgres, BENCH_RECORD=0 to leave
# bench/RESULTS.md alone, BENCH_PERF=FILE to `perf record` the gateway during the
# non-stream run (its CPU figure then includes perf's own cost).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
SECS=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-1}
GW_BIN=${GATEWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/gateway}
DIRECT_ONLY=0
SERVE=0
BACKEND=sqlite
while [[ $# -gt 0 ]]; do
  case "$1" in
    --direct-only) DIRECT_ONLY=1 ;;
    --serve) SERVE=1 ;;
    --backend) BACKEND=${2:-}; shift ;;
    --backend=*) BACKEND=${1#--backend=} ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--backend sqlite|postgres] [--direct-only] [--serve]" >&2; exit 2 ;;
  esac
  shift
done
case "$BACKEND" in sqlite|postgres) ;; *) echo "--backend: sqlite or postgres" >&2; exit 2 ;; esac
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
BENCH_REDIS_URL=${BENCH_REDIS_URL:-redis://127.0.0.1:6379}

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
NGINX_PID="" GW_PID="" SAMPLER_PID="" SLOW_PID="" PG_DBS=() REDIS_PREFIXES=()
cleanup() {
  local rc=$?
  for pid in "$SAMPLER_PID" "$GW_PID" "$NGINX_PID" "$SLOW_PID"; do
    if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  done
  for db in "${PG_DBS[@]}"; do psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; done
  for p in "${REDIS_PREFIXES[@]}"; do
    redis-cli -u "$BENCH_REDIS_URL" --scan --pattern "$p:*" | xargs -r redis-cli -u "$BENCH_REDIS_URL" del >/dev/null 2>&1 || true
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
  # backend_env NAME: the environment of a gateway on a fresh database (and Redis
  # namespace) of this run's backend.
  backend_env() {
    if [[ $BACKEND == postgres ]]; then
      local db="tg_bench_$$_$1"
      psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $db" >/dev/null || die "cannot create database $db at $PG_ADMIN_URL"
      PG_DBS+=("$db")
      REDIS_PREFIXES+=("tgbench$$$1")
      echo "DATABASE_URL=${PG_ADMIN_URL%/*}/$db REDIS_URL=$BENCH_REDIS_URL TOLLGATE_REDIS_PREFIX=tgbench$$$1"
    else
      echo "DATABASE_URL=sqlite://$T/$1.db?mode=rwc"
    fi
  }
  SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

  # Cold start: exec to the first 200 from /healthz, on a fresh database (migrations
  # included), three times; the median is reported.
  for i in 1 2 3; do
    # shellcheck disable=SC2046
    env $(backend_env "cold$i") TOLLGATE_ROOT_PASSWORD=benchpass TOLLGATE_SECRET_KEY="$SECRET" RUST_LOG=warn \
      python3 - "$GW_BIN" "$(free_port)" >>"$T/cold" <<'PY' || die "cold start failed"
import os, socket, subprocess, sys, time
bin_, port = sys.argv[1], int(sys.argv[2])
env = dict(os.environ, TOLLGATE_ADDR=f"127.0.0.1:{port}")
t0 = time.monotonic()
p = subprocess.Popen([bin_], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
ms = None
while time.monotonic() - t0 < 30 and p.poll() is None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                ms = (time.monotonic() - t0) * 1000
                break
    except OSError:
        pass
    time.sleep(0.002)
p.terminate(); p.wait()
if ms is None:
    sys.exit("gateway never answered /healthz")
print(f"{ms:.1f}")
PY
  done
  COLD_MS=$(sort -n "$T/cold" | sed -n 2p)
  log "cold start to /healthz: $(tr '\n' ' ' <"$T/cold")ms (median $COLD_MS)"

  GW_PORT=$(free_port)
  GW="http://127.0.0.1:$GW_PORT"
  # shellcheck disable=SC2046
  env $(backend_env main) \
  TOLLGATE_ADDR=127.0.0.1:$GW_PORT \
  TOLLGATE_ROOT_PASSWORD=benchpass \
  TOLLGATE_SECRET_KEY=$SECRET \
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
  SLOW_PORT=$(free_port)
  python3 "$BENCH_DIR/slow_stream.py" serve "$SLOW_PORT" 64 20 &
  SLOW_PID=$!
  SLOW="http://127.0.0.1:$SLOW_PORT"
  api POST /channels "{\"name\":\"mock-slow\",\"type\":\"openai\",\"base_url\":\"$SLOW\",\"keys\":[\"sk-upstream\"],\"models\":[\"gpt-4o-mini-slow\"],\"model_mapping\":{\"gpt-4o-mini-slow\":\"gpt-4o-mini\"}}" >/dev/null
  api PUT /pricing/models/gpt-4o-mini-slow '{"input":0.15,"output":0.6}' >/dev/null
  SK=$(api POST /keys '{"name":"bench"}' | field key)
  BALANCE0=$(api GET /me | field balance)
  log "set up: root id $ROOT_ID, 2 channels, 2 prices, key ${SK:0:7}…; balance $BALANCE0"

  check_answer "$GW/v1/chat/completions" "$BENCH_DIR/requests/chat.json" "$SK"
  check_answer "$GW/v1/chat/completions" "$BENCH_DIR/requests/chat_stream.json" "$SK"

  # RSS is VmRSS; "anon" is its anonymous part (RssAnon: heap and stacks), without the
  # binary's own code and data pages that the kernel maps in from the page cache.
  rss_kb() { awk -v f="$1" '$1 == f":" {print $2}' "/proc/$GW_PID/status" 2>/dev/null || true; }
  sleep 1
  RSS_IDLE=$(rss_kb VmRSS)
  ANON_IDLE=$(rss_kb RssAnon)
  echo "${RSS_IDLE:-0} ${ANON_IDLE:-0}" >"$T/rss_peak"
  (
    peak=${RSS_IDLE:-0} apeak=${ANON_IDLE:-0}
    while kill -0 "$GW_PID" 2>/dev/null; do
      v=$(rss_kb VmRSS); v=${v:-0}
      a=$(rss_kb RssAnon); a=${a:-0}
      if (( v > peak || a > apeak )); then
        (( v > peak )) && peak=$v
        (( a > apeak )) && apeak=$a
        echo "$peak $apeak" >"$T/rss_peak"
      fi
      sleep 0.2
    done
  ) &
  SAMPLER_PID=$!
fi

if [[ $SERVE -eq 1 && $DIRECT_ONLY -eq 0 ]]; then
  log "serving until interrupted: gateway $GW (pid $GW_PID), mock $MOCK, key in $T/key"
  printf '%s\n' "$SK" >"$T/key"
  printf 'GW=%s GW_PID=%s MOCK=%s SK=%s BODY=%s\n' "$GW" "$GW_PID" "$MOCK" "$SK" "$BENCH_DIR/requests/chat.json"
  while kill -0 "$GW_PID" 2>/dev/null; do sleep 1; done
  exit 0
fi

# ---------------------------------------------------------------- load
# bench NAME URL BODY KEY CONNS THREADS: warm up, then one measured wrk run.
cpu_ticks() { if [[ -n $GW_PID ]]; then awk '{print $14 + $15}' "/proc/$GW_PID/stat"; else echo 0; fi; }
bench() {
  local name=$1 url=$2 body=$3 key=$4 conns=$5 threads=$6 line t0 t1 reqs
  log "$name: wrk -c$conns -t$threads -d${SECS}s $url"
  BENCH_BODY=$body BENCH_AUTH=$key wrk -c"$conns" -t"$threads" -d"${WARMUP}s" -s "$BENCH_DIR/post.lua" "$url" >/dev/null
  t0=$(cpu_ticks)
  local perf_pid=""
  if [[ -n ${BENCH_PERF:-} && $name == gateway_ns32 ]]; then
    perf record -q -F ${BENCH_PERF_HZ:-1999} ${BENCH_PERF_CG:--g} -p "$GW_PID" -o "$BENCH_PERF" -- sleep "$SECS" 2>/dev/null &
    perf_pid=$!
  fi
  BENCH_BODY=$body BENCH_AUTH=$key wrk -c"$conns" -t"$threads" -d"${SECS}s" -s "$BENCH_DIR/post.lua" "$url" >"$T/wrk-$name.txt"
  t1=$(cpu_ticks)
  if [[ -n $perf_pid ]]; then wait "$perf_pid" || true; fi
  line=$(grep '^BENCH ' "$T/wrk-$name.txt") || die "no result from wrk: $(cat "$T/wrk-$name.txt")"
  reqs=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$line")
  # The gateway's user + system CPU over the measured run (/proc ticks are 10 ms).
  line="$line cpu_us=$(( (t1 - t0) * 10000 / (reqs > 0 ? reqs : 1) ))"
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

if [[ $DIRECT_ONLY -eq 0 ]]; then
  log "slow stream: 64 events 20 ms apart, 3 streams, direct then through the gateway"
  python3 "$BENCH_DIR/slow_stream.py" measure "$SLOW/v1/chat/completions" gpt-4o-mini "" 3 | sed 's/^SLOW /slow_direct /' >>"$T/results"
  python3 "$BENCH_DIR/slow_stream.py" measure "$GW/v1/chat/completions" gpt-4o-mini-slow "$SK" 3 | sed 's/^SLOW /slow_gateway /' >>"$T/results"
  tail -2 "$T/results" | sed 's/^/   /' >&2
fi

RSS_PEAK="" ANON_PEAK=""
if [[ $DIRECT_ONLY -eq 0 ]]; then
  kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""
  read -r RSS_PEAK ANON_PEAK <"$T/rss_peak"
  sleep 2  # charges are visible within 2 s (API.md §3)
  BALANCE1=$(api GET /me | field balance)
  log "billing: root balance $BALANCE0 -> $BALANCE1 credits"
fi

# ---------------------------------------------------------------- summary
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
# (the results file itself does not count: every run changes it)
[[ -z $(git -C "$ROOT" status --porcelain --untracked-files=no -- . ':!bench/RESULTS.md' 2>/dev/null) ]] || COMMIT="$COMMIT+dirty"
python3 - "$T/results" "$DIRECT_ONLY" "${RSS_IDLE:-}" "$RSS_PEAK" "$SECS" "$BACKEND" "${COLD_MS:-}" "$COMMIT" "${ANON_IDLE:-}" "$ANON_PEAK" >"$T/table" <<'PY'
import sys, datetime
path, direct_only, rss_idle, rss_peak, secs, backend, cold_ms, commit, anon_idle, anon_peak = sys.argv[1:]
direct_only = direct_only == "1"
r = {}
for line in open(path):
    name, *kv = line.split()
    r[name] = {k: float(v) for k, v in (x.split("=") for x in kv)}
fails = []
def verdict(ok, what):
    if not ok:
        fails.append(what)
    return "PASS" if ok else "FAIL"

backend_label = {"sqlite": "SQLite + in-process", "postgres": "Postgres + Redis"}[backend]
print(f"### {datetime.date.today()} · commit {commit} · {backend_label} · {secs} s per run\n")
print("```")
print(f"{'throughput (req/s)':<28}{'direct':>11}{'gateway':>11}{'ratio':>8}  {'target':<9}")
for key, label, target in (("ns32", "non-stream, 32 conns", 0.30), ("st32", "stream, 32 conns", 0.20)):
    d, g = r[f"direct_{key}"], r.get(f"gateway_{key}")
    if g is None:
        print(f"{label:<28}{d['rps']:>11.0f}{'-':>11}{'-':>8}  >= {target:.2f}")
    else:
        ratio = g["rps"] / d["rps"]
        print(f"{label:<28}{d['rps']:>11.0f}{g['rps']:>11.0f}{ratio:>8.3f}  >= {target:.2f}   {verdict(ratio >= target, label)}")

print(f"\n{'latency, 1 conn (ms)':<28}{'direct':>11}{'gateway':>11}{'added':>8}  {'target':<9}")
d, g = r["direct_ns1"], r.get("gateway_ns1")
for pct, target in (("p50", 0.1), ("p99", 0.5)):
    dm = d[f"{pct}_us"] / 1000
    if g is None:
        print(f"{pct:<28}{dm:>11.3f}{'-':>11}{'-':>8}  <= {target}")
    else:
        gm = g[f"{pct}_us"] / 1000
        print(f"{pct:<28}{dm:>11.3f}{gm:>11.3f}{gm - dm:>8.3f}  <= {target:<6}   {verdict(gm - dm <= target, 'added ' + pct)}")

if not direct_only:
    cpu = r["gateway_ns32"]["cpu_us"]
    print(f"\n{'gateway CPU per request (µs)':<28}{cpu:>11.0f}{'':>19}  <= 60       {verdict(cpu <= 60, 'cpu/request')}")
    print(f"\n{'gateway memory (MiB)':<28}{'RSS':>11}{'anon':>11}{'':>8}  {'target':<9}")
    for label, kb, akb, target in (("idle, before load", rss_idle, anon_idle, 12), ("peak, during load", rss_peak, anon_peak, 32)):
        mib, amib = float(kb or 0) / 1024, float(akb or 0) / 1024
        print(f"{label:<28}{mib:>11.1f}{amib:>11.1f}{'':>8}  <= {target:<6}   {verdict(mib <= target, 'rss ' + label)}")
    cold = float(cold_ms or "nan")
    print(f"\n{'cold start to /healthz (ms)':<28}{cold:>11.1f}{'':>19}  <= 200      {verdict(cold <= 200, 'cold start')}")
    print(f"\n{'slow stream (64 × 20 ms)':<28}{'direct':>11}{'gateway':>11}")
    sd, sg = r["slow_direct"], r["slow_gateway"]
    for k, label in (("events", "events received"), ("p50_ms", "delay p50 (ms)"), ("p99_ms", "delay p99 (ms)"), ("max_ms", "delay max (ms)"), ("stalls", "events > 2 ms late")):
        fmt = (lambda v: f"{v:>11.0f}") if k in ("events", "stalls") else (lambda v: f"{v:>11.3f}")
        extra = ""
        if k == "stalls":
            extra = f"  == 0       {verdict(sg['stalls'] == 0 and sg['lost'] == 0, 'slow stream')}"
        print(f"{label:<28}{fmt(sd[k])}{fmt(sg[k])}{extra}")

bad = [f"{n}: {int(v['non2xx'])} non-2xx, {int(v['sockerr'])} socket errors"
       for n, v in r.items() if v.get("non2xx") or v.get("sockerr")]
if bad:
    print("\nWARNING: errors during load; the numbers above are not valid:\n  " + "\n  ".join(bad))
print("```")
print(f"\n{'all targets met' if not fails and not bad else 'not met: ' + ', '.join(fails)}\n")
PY
echo
cat "$T/table"
if [[ $DIRECT_ONLY -eq 0 && ${BENCH_RECORD:-1} != 0 ]]; then
  [[ -f $BENCH_DIR/RESULTS.md ]] || printf '# bench results\n\nEvery run of `bench/run.sh`, newest last (the script appends its table here).\n\n' >"$BENCH_DIR/RESULTS.md"
  cat "$T/table" >>"$BENCH_DIR/RESULTS.md"
  log "table appended to bench/RESULTS.md"
fi
