-- Browser spec: headless Chromium loads the admin dashboard (GET / on --admin) while line-echo
-- traffic runs, and checks that every chart rendered (spec/browser/dashboard_test.js). Needs
-- /usr/bin/chromium and `npm install` in spec/browser (playwright-core).
local H = require "helper"

describe("admin dashboard in a browser #integration #browser", function()
  it("refreshes live and draws every chart", function()
    local ok, why = H.browser_usable()
    assert.is_true(ok, why)
    local admin = H.free_port()
    local srv = H.start_server { script = "handlers/lines_echo.lua", loops = 2,
      args = { "--admin", "127.0.0.1:" .. admin } }
    local base = os.tmpname()
    os.remove(base)
    local shot = base .. "-dashboard.png"
    local out, rc = H.sh(("cd spec/browser && timeout 120 node dashboard_test.js %d %d %s"):format(admin,
      srv.port, shot))
    local log = srv:log()
    srv:stop()
    assert.equal(0, rc, out .. "\n--- server log ---\n" .. log)
    assert.matches("ok dashboard refreshed %d+ times", out)
    assert.matches("ok every chart drew its series", out)
    assert.matches("ok traffic shows", out)
    assert.matches("screenshot " .. shot:gsub("%p", "%%%0"), out)
    assert.is_true(#(H.read_file(shot) or "") > 10000, "screenshot missing or empty: " .. shot)
    print("\ndashboard screenshot: " .. shot)
  end)
end)
