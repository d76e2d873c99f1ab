-- Packaging: the rockspec installs the Lua library and the binary with `luarocks make`,
-- offline, into a tree of its own, and the installed binary finds its library.
local H = require "helper"

describe("rockspec #integration", function()
  it("luarocks make installs a working moonwire", function()
    local dir = H.tmpdir()
    local src, tree = dir .. "/src", dir .. "/tree"
    -- A copy of the tracked sources, so the build does not touch this checkout.
    local out, rc = H.sh(("mkdir -p %s && git ls-files -z | xargs -0 cp --parents -t %s"):format(src, src))
    assert.equal(0, rc, out)
    out, rc = H.sh(("cd %s && luarocks make --tree %s moonwire-scm-1.rockspec"):format(src, tree))
    assert.equal(0, rc, out)
    assert.matches("moonwire scm%-1 is now installed", out)
    out, rc = H.sh(tree .. "/bin/moonwire --version")
    assert.equal(0, rc, out)
    assert.matches("^moonwire %d", out)
    assert.truthy(H.read_file(tree .. "/share/lua/5.1/moonwire/runtime.lua"))
    assert.truthy(H.read_file(tree .. "/share/lua/5.1/moonwire/http/parser.lua"))
    -- The installed binary serves with the installed library (not this checkout's).
    local srv = H.start_server { script = "handlers/echo.lua", bin = tree .. "/bin/moonwire",
      cwd = "/tmp" }
    local c = assert(H.connect(srv.port))
    assert(c:send("installed"))
    assert.equal("installed", c:receive(9))
    c:close()
    srv:stop()
    H.sh("rm -rf " .. dir)
  end)
end)
