-- wrk script: POST the v2 JSON body from the file named by $PEERS_BODY; at the end print one
-- line "PEERS {json}" with the counts and latency percentiles (microseconds) for run.py.
local f = assert(io.open(os.getenv("PEERS_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'PEERS {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
      .. '"max_us":%d,"mean_us":%.1f,"errors_status":%d,"errors_connect":%d,"errors_read":%d,'
      .. '"errors_write":%d,"errors_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, latency.mean, e.status,
    e.connect, e.read, e.write, e.timeout))
end
