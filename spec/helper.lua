-- Shared helpers for integration specs: start the real binary on a loopback port, talk to it
-- with real sockets, stop it by PID. Every wait is bounded.
local socket = require "socket"
local unistd = require "posix.unistd"
local wait = require "posix.sys.wait"
local signal = require "posix.signal"
local fcntl = require "posix.fcntl"

local H = {}

H.root = os.getenv("MOONWIRE_ROOT") or "."
H.bin = os.getenv("MOONWIRE_BIN") or (H.root .. "/bin/moonwire")

function H.sleep(s)
  socket.sleep(s)
end

function H.now()
  return socket.gettime()
end

--- Polls fn until it returns a truthy value or `seconds` pass; returns fn's last value.
function H.wait_for(fn, seconds)
  local deadline = socket.gettime() + (seconds or 5)
  repeat
    local v = fn()
    if v then
      return v
    end
    socket.sleep(0.02)
  until socket.gettime() > deadline
  return fn()
end

local tmp_counter = 0

function H.tmpdir()
  tmp_counter = tmp_counter + 1
  local dir = string.format("/tmp/moonwire-spec-%d-%d-%d", unistd.getpid(), os.time(), tmp_counter)
  os.execute("mkdir -p " .. dir)
  return dir
end

function H.write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

function H.read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

--- Runs a shell command; returns its output and exit code.
function H.sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"__rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  out = out:gsub("__rc=%d+%s*$", "")
  return out, rc
end

--- A free loopback port (bind to 0, read it back, release it).
function H.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

function H.connect(port, host)
  local c = assert(socket.tcp())
  c:settimeout(5)
  local ok, err = c:connect(host or "127.0.0.1", port)
  if not ok then
    c:close()
    return nil, err
  end
  return c
end

local server_mt = {}
server_mt.__index = server_mt

function server_mt:log()
  return H.read_file(self.logfile) or ""
end

--- True while the process runs.
function server_mt:alive()
  if self.status then
    return false
  end
  local pid, how, code = wait.wait(self.pid, wait.WNOHANG)
  if pid == self.pid then
    self.status = { how = how, code = code }
    return false
  end
  return true
end

--- Waits up to `seconds` for exit; returns the exit code (or nil, "running").
function server_mt:wait_exit(seconds)
  local deadline = socket.gettime() + (seconds or 10)
  while socket.gettime() < deadline do
    if not self:alive() then
      return self.status.code, self.status.how
    end
    socket.sleep(0.02)
  end
  return nil, "running"
end

function server_mt:signal(sig)
  if self:alive() then
    signal.kill(self.pid, sig)
  end
end

--- SIGTERM and wait; returns the exit code. Kills with SIGKILL if it does not stop.
function server_mt:stop(seconds)
  if not self:alive() then
    return self.status.code, self.status.how
  end
  signal.kill(self.pid, signal.SIGTERM)
  local code, how = self:wait_exit(seconds or 10)
  if code == nil then
    signal.kill(self.pid, signal.SIGKILL)
    code = self:wait_exit(5)
    return code, "killed"
  end
  return code, how
end

function server_mt:kill()
  if self:alive() then
    signal.kill(self.pid, signal.SIGKILL)
    self:wait_exit(5)
  end
end

--- Starts `moonwire run SCRIPT` (or opts.command) on a free loopback port.
-- opts: script, loops, args (list), command ("run"), env (table), cwd, bin, port, wait (seconds),
-- expect_fail (do not wait for the port).
function H.start_server(opts)
  local port = opts.port or H.free_port()
  local logfile = os.tmpname()
  local argv = { opts.command or "run" }
  if opts.script then
    local script = opts.script
    if opts.cwd and script:sub(1, 1) ~= "/" then
      script = (os.getenv("PWD") or ".") .. "/" .. script
    end
    argv[#argv + 1] = script
  end
  argv[#argv + 1] = "--listen"
  argv[#argv + 1] = (opts.host or "127.0.0.1") .. ":" .. port
  argv[#argv + 1] = "--loops"
  argv[#argv + 1] = tostring(opts.loops or 1)
  for _, a in ipairs(opts.args or {}) do
    argv[#argv + 1] = a
  end
  local bin = opts.bin or H.bin
  if bin:sub(1, 1) ~= "/" then
    bin = (os.getenv("PWD") or ".") .. "/" .. bin
  end
  local pid = unistd.fork()
  if pid == 0 then
    local fd = fcntl.open(logfile, fcntl.O_WRONLY + fcntl.O_CREAT + fcntl.O_TRUNC, 420)
    unistd.dup2(fd, 2)
    local null = fcntl.open("/dev/null", fcntl.O_RDWR)
    unistd.dup2(null, 0)
    unistd.dup2(null, 1)
    if opts.cwd then
      unistd.chdir(opts.cwd)
    end
    for k, v in pairs(opts.env or {}) do
      require("posix.stdlib").setenv(k, v)
    end
    unistd.execp(bin, argv)
    os.exit(127)
  end
  local srv = setmetatable({ pid = pid, port = port, logfile = logfile }, server_mt)
  if opts.expect_fail then
    return srv
  end
  local up = H.wait_for(function()
    if not srv:alive() then
      return "dead"
    end
    local c = H.connect(port)
    if c then
      c:close()
      return "up"
    end
  end, opts.wait or 10)
  if up ~= "up" then
    local log = srv:log()
    srv:kill()
    error("server did not start (" .. tostring(up) .. "): " .. log, 2)
  end
  return srv
end

--- One connection on each of a server's `loops` loops. loop_of(conn) asks the server which
-- loop serves conn (the fixtures reply with their loop id). SO_REUSEPORT spreads connections
-- by hash, so this keeps connecting (at most `tries` times) until every loop has one; extra
-- connections are closed. Returns a list indexed by loop id.
function H.one_per_loop(port, loops, loop_of, tries)
  local by_loop, found = {}, 0
  for _ = 1, tries or 80 do
    local c = assert(H.connect(port))
    local id = loop_of(c)
    if by_loop[id] then
      c:close()
    else
      by_loop[id] = c
      found = found + 1
    end
    if found == loops then
      return by_loop
    end
  end
  error(("connections reached %d of %d loops"):format(found, loops), 2)
end

--- Sends one line and returns the line that answers it (a failed read fails the spec).
function H.ask(c, line)
  assert(c:send(line .. "\n"))
  return assert(c:receive("*l"))
end

--- Reads exactly n bytes (or until timeout); returns the data or nil, err, partial.
function H.recv_exact(c, n)
  local data, err, partial = c:receive(n)
  if data then
    return data
  end
  return nil, err, partial
end

--- Whether the headless-browser specs can run: Debian's chromium and playwright-core
-- (installed into spec/browser by scripts/install-deps.sh). Returns true, or false and why.
function H.browser_usable()
  if not H.read_file("/usr/bin/chromium") then
    return false, "/usr/bin/chromium is missing (apt-get install chromium)"
  end
  local _, rc = H.sh("test -d spec/browser/node_modules/playwright-core")
  if rc ~= 0 then
    return false, "run `npm install` in spec/browser first (scripts/install-deps.sh does)"
  end
  return true
end

--- TCP states of sockets on `port` from /proc/net/tcp{,6}: a list of state names.
local TCP_STATES = {
  ["01"] = "ESTABLISHED", ["02"] = "SYN_SENT", ["03"] = "SYN_RECV", ["04"] = "FIN_WAIT1",
  ["05"] = "FIN_WAIT2", ["06"] = "TIME_WAIT", ["07"] = "CLOSE", ["08"] = "CLOSE_WAIT",
  ["09"] = "LAST_ACK", ["0A"] = "LISTEN", ["0B"] = "CLOSING",
}

--- Sockets whose LOCAL port is `port` (the server side), as a list of state names.
function H.server_socket_states(port)
  local states = {}
  local hexport = string.format(":%04X", port)
  for _, file in ipairs { "/proc/net/tcp", "/proc/net/tcp6" } do
    local f = io.open(file)
    if f then
      for line in f:lines() do
        local l, st = line:match("^%s*%d+:%s+(%S+)%s+%S+%s+(%x%x)")
        if l and l:sub(-5) == hexport then
          states[#states + 1] = TCP_STATES[st] or st
        end
      end
      f:close()
    end
  end
  return states
end

--- CPU seconds (user+system) the process has used, from /proc/PID/stat.
function H.cpu_seconds(pid)
  local s = H.read_file("/proc/" .. pid .. "/stat")
  if not s then
    return nil
  end
  local rest = s:match("%) (.*)$")
  local fields = {}
  for w in rest:gmatch("%S+") do
    fields[#fields + 1] = w
  end
  -- after ") ": state is field 1; utime is field 12, stime field 13
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100
end

function H.rss_kb(pid)
  local s = H.read_file("/proc/" .. pid .. "/status") or ""
  return tonumber(s:match("VmRSS:%s+(%d+)"))
end

return H
