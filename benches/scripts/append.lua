-- wrk script for benches/throughput.sh: every request appends EVENTS events to a stream of its
-- own (expected_version "any"), and no two requests anywhere send the same stream or events.
--
-- Environment:
--   TOKEN   a bearer token with the writer role (required)
--   EVENTS  events per request (default 1)
--   SIZE    "1k": ~900 bytes of data (benches/scripts/event_1k.json plus an "n" member), a
--           subject from a pool of 1,000 identifiers, two metadata pairs;
--           "64": the ~64-byte event of benches/append.rs (no subject, one metadata pair)
--   RUN     a prefix unique to this cell and wrk process (stream ids are RUN-thread-counter)
--   EVENT_FILE  path of event_1k.json (default: beside this script, as throughput.sh runs it)
--
-- done() prints one `result NAME VALUE` line per figure, which throughput.sh parses.

local token = os.getenv("TOKEN") or error("TOKEN is not set")
local events = tonumber(os.getenv("EVENTS") or "1")
local size = os.getenv("SIZE") or "1k"
local run = os.getenv("RUN") or error("RUN is not set")
local event_file = os.getenv("EVENT_FILE") or error("EVENT_FILE is not set")

if size ~= "1k" and size ~= "64" then
  error("SIZE must be 1k or 64, not " .. size)
end

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

-- Per thread (each thread has its own Lua state).
local data_rest -- event_1k.json without its opening brace: `"action":...}`
local counter = 0
local headers

function init(args)
  counter = 0
  non2xx = 0
  first_bad = ""
  headers = {
    ["content-type"] = "application/json",
    ["authorization"] = "Bearer " .. token,
  }
  if size == "1k" then
    local f = assert(io.open(event_file, "r"))
    local text = f:read("*a"):gsub("%s+$", "")
    f:close()
    assert(text:sub(1, 1) == "{", "event file must hold one JSON object")
    data_rest = text:sub(2)
  end
end

local function event(n)
  if size == "1k" then
    -- A subject from a pool of 1,000, spread over threads and requests.
    local subject = string.format("customer-%04d", (id * 7919 + n * 31) % 1000)
    return '{"type":"PaymentCaptured","subject":"' .. subject .. '","data":{"n":' .. n .. ","
      .. data_rest .. ',"metadata":{"source":"bench-gateway","request_id":"r' .. n .. '"}}'
  end
  return '{"type":"PaymentInitiated","data":{"amount":' .. n
    .. ',"currency":"EUR","iban":"DE89370400440532013000"},"metadata":{"source":"bench"}}'
end

function request()
  counter = counter + 1
  local list = {}
  -- n is unique across threads and requests (LuaJIT's doubles hold it exactly).
  local base = id * 1000000000 + counter * events
  for i = 0, events - 1 do
    list[#list + 1] = event(base + i)
  end
  local body = '{"expected_version":"any","events":[' .. table.concat(list, ",") .. "]}"
  local path = "/v1/streams/" .. run .. "-" .. id .. "-" .. counter .. "/events"
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if first_bad == "" then
      first_bad = status .. " " .. string.sub(body or "", 1, 300)
    end
  end
end

function done(summary, latency, requests)
  local bad, first = 0, ""
  for _, t in ipairs(threads) do
    bad = bad + t:get("non2xx")
    local f = t:get("first_bad")
    if first == "" and f ~= nil then
      first = f
    end
  end
  local e = summary.errors
  io.write(string.format("result requests %d\n", summary.requests))
  io.write(string.format("result duration_s %.3f\n", summary.duration / 1e6))
  io.write(string.format("result non2xx %d\n", bad))
  io.write(string.format("result socket_errors %d\n", e.connect + e.read + e.write + e.timeout))
  io.write(string.format("result p50_ms %.3f\n", latency:percentile(50) / 1000))
  io.write(string.format("result p99_ms %.3f\n", latency:percentile(99) / 1000))
  io.write(string.format("result p999_ms %.3f\n", latency:percentile(99.9) / 1000))
  if first ~= "" then
    io.write("result first_bad " .. first:gsub("\n", " ") .. "\n")
  end
end
