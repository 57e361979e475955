-- POSTs one fixed request (BODY, with TOKEN as a bearer token) over and over.
wrk.method = os.getenv("METHOD") or "POST"
wrk.body = os.getenv("BODY")
wrk.headers["Content-Type"] = "application/json"
if os.getenv("TOKEN") then
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

function done(summary, latency, requests)
  io.write(string.format('BENCH {"p50": %d, "p99": %d, "p999": %d, "statuses": {}}\n',
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
