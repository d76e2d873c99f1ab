std = "luajit"
codes = true
unused_args = false
max_line_length = 120
exclude_files = {
  "bench/node_modules/**", "spec/browser/node_modules/**",
  -- deliberately broken handlers for the load-error specs
  "spec/fixtures/syntax_error.lua", "spec/fixtures/top_level_error.lua", "spec/fixtures/*_broken*.lua",
}
files["spec/**/*_spec.lua"] = { std = "+busted" }
files["spec/helper.lua"] = { std = "+busted" }
