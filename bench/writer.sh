#!/usr/bin/env bash
# Settled generations per second through the batched writer (generation row, charge
# and ledger row per request, one transaction per batch), on a throw-away Postgres
# database, or on SQLite with `bench/writer.sh sqlite`.
set -euo pipefail
cd "$(dirname "$0")/.."
records=${RECORDS:-50000}
users=${USERS:-100}
if [ "${1:-postgres}" = "sqlite" ]; then
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  url="sqlite://$dir/writer.db?mode=rwc"
else
  admin=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  name="tg_writer_bench_$$"
  psql "$admin" -qc "CREATE DATABASE $name"
  trap 'psql "$admin" -qc "DROP DATABASE IF EXISTS $name WITH (FORCE)"' EXIT
  url="${admin%/*}/$name"
fi
cargo run --quiet --release -p billing --example writer_bench -- "$url" "$records" "$users" ${REDIS_URL:+"$REDIS_URL"}
