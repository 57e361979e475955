-- Checks out a different cart with every request: the carts are listed, one per
-- line, in the file named by CARTS; each wrk thread walks its own stripe of them.
local token = os.getenv("TOKEN")
local carts_file = os.getenv("CARTS")
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  carts = {}
  for line in io.lines(carts_file) do
    carts[#carts + 1] = line
  end
  stride = tonumber(os.getenv("THREADS") or "1")
  next_index = id
  statuses = {}
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
  local cart = carts[next_index]
  next_index = next_index + stride
  if cart == nil then
    cart = "cart_exhausted"
  end
  local body = '{"cartId":"' .. cart .. '","paymentToken":"tok_visa","userId":"usr_bench"}'
  return wrk.format(nil, "/api/checkout/complete", nil, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for status, count in pairs(counts) do
      totals[status] = (totals[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(totals) do
    parts[#parts + 1] = string.format('"%d": %d', status, count)
  end
  io.write(string.format('BENCH {"p50": %d, "p99": %d, "p999": %d, "statuses": {%s}}\n',
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), table.concat(parts, ", ")))
end
