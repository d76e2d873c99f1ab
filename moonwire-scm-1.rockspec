rockspec_format = "3.0"
package = "moonwire"
version = "scm-1"
source = {
  url = "git+file://.",
}
description = {
  summary = "Scriptable server runtime: a multi-loop libuv reactor running LuaJIT handlers",
  detailed = [[
moonwire runs TCP, HTTP and WebSocket servers whose protocols, routes and endpoints are
LuaJIT scripts, hot-reloaded per loop while connections stay open.
]],
  license = "MIT",
  homepage = "https://example.invalid/moonwire",
}
dependencies = {
  "lua == 5.1",
}
external_dependencies = {
  LIBUV = { header = "uv.h" },
}
build = {
  type = "make",
  build_target = "all",
  install_target = "install",
  build_variables = {
    LUADIR = "$(LUADIR)",
    CFLAGS = "$(CFLAGS)",
  },
  install_variables = {
    LUADIR = "$(LUADIR)",
    BINDIR = "$(BINDIR)",
  },
}
