-- Browser spec: headless Chromium runs the chat example's page (see
-- spec/browser/chat_test.js).  Needs /usr/bin/chromium and
-- `npm install` in spec/browser (playwright-core).  The server runs a
-- temporary copy of examples/chat so the spec can edit the handler.
local H = require "helper"

describe("chat example in a browser #integration #browser", function()
  it("shows messages across two pages and picks up an edited handler without reconnecting", function()
    local ok, why = H.browser_usable()
    assert.is_true(ok, why)
    local dir = H.tmpdir()
    assert.equal(0, select(2, H.sh("cp -r examples/chat/. " .. dir .. "/")))
    local app = dir .. "/app.lua"
    local srv = H.start_server { script = app, loops = 2 }
    local out, rc = H.sh("cd spec/browser && timeout 120 node chat_test.js " .. srv.port .. " " .. app)
    local log = srv:log()
    srv:stop()
    H.sh("rm -rf " .. dir)
    assert.equal(0, rc, out .. "\n--- server log ---\n" .. log)
    assert.matches("ok messages cross between the pages", out)
    assert.matches("ok reloaded handler formats the next message, no page reconnected", out)
    assert.matches("reloaded", log)
  end)
end)
