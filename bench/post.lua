-- wrk script: POST a JSON body, optionally with a bearer key, and print one
-- machine-readable result line from done().
--   BENCH_BODY  path of the request body (JSON)
--   BENCH_AUTH  value for "Authorization: Bearer ..." (empty = no header)
local function slurp(path)
  local f = assert(io.open(path, "rb"), "cannot open BENCH_BODY " .. tostring(path))
  local s = f:read("*a")
  f:close()
  return s
end

wrk.method = "POST"
wrk.body = slurp(os.getenv("BENCH_BODY"))
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH rps=%.1f p50_us=%.0f p99_us=%.0f requests=%d non2xx=%d sockerr=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
