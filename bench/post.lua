-- wrk script: POST a realistic exam.completed webhook with Basic auth, a fresh user and attempt
-- id per request (message ids derive from them, so nothing is de-duplicated away), and print
-- one machine-readable line with throughput and latency percentiles at the end.
--
-- Environment: BENCH_TEMPLATE (file holding the body with @@USER@@ / @@ATTEMPT@@ markers),
-- BENCH_AUTH (the Authorization header value, optional), BENCH_TAG (makes ids unique per run).

local template_path = os.getenv("BENCH_TEMPLATE")
local auth = os.getenv("BENCH_AUTH")
local tag = os.getenv("BENCH_TAG") or "run"

local file = assert(io.open(template_path, "rb"))
local template = file:read("*a")
file:close()

-- Split the template into texts and slot names once; requests only concatenate.
local texts, slots = {}, {}
local position = 1
while true do
  local u = string.find(template, "@@USER@@", position, true)
  local a = string.find(template, "@@ATTEMPT@@", position, true)
  local at, slot, width
  if u and (not a or u < a) then at, slot, width = u, "user", 8
  elseif a then at, slot, width = a, "attempt", 11
  end
  if not at then texts[#texts + 1] = string.sub(template, position); break end
  texts[#texts + 1] = string.sub(template, position, at - 1)
  slots[#slots + 1] = slot
  position = at + width
end

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
  table.insert(threads, thread)
end

local counter = 0
local headers = { ["Content-Type"] = "application/json" }
if auth and auth ~= "" then headers["Authorization"] = auth end

function request()
  counter = counter + 1
  local number = tostring(tid) .. "x" .. tostring(counter)
  local values = { user = "u-" .. tag .. "-" .. number, attempt = "a-" .. tag .. "-" .. number }
  local pieces = {}
  for i = 1, #slots do
    pieces[#pieces + 1] = texts[i]
    pieces[#pieces + 1] = values[slots[i]]
  end
  pieces[#pieces + 1] = texts[#texts]
  return wrk.format("POST", nil, headers, table.concat(pieces))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
