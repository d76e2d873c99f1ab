-- Renders folded stacks ("a;b;c count" per line) as an SVG flame graph: the root at the
-- bottom, each frame as wide as the samples that passed through it, children above their
-- parent in name order. Hovering a frame shows its name and share (an SVG <title>).
local concat = table.concat
local format = string.format
local sort = table.sort
local floor = math.floor

local _M = { _VERSION = "0.1.0" }

local function escape(s)
  return (s:gsub("[&<>\"]", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;" }))
end

local function hash(s)
  local h = 5381
  for i = 1, #s do
    h = (h * 33 + s:byte(i)) % 4294967296
  end
  return h
end

-- Warm colours, stable per function name.
local function colour(name)
  local h = hash(name)
  return format("rgb(%d,%d,%d)", 205 + h % 50, 80 + floor(h / 50) % 130, floor(h / 6500) % 55)
end

--- Builds the frame tree from folded text. Returns root { name, value, children = {name -> node} }.
function _M.tree(folded)
  local root = { name = "all", value = 0, children = {} }
  for line in folded:gmatch("[^\n]+") do
    local stack, n = line:match("^(.*) (%d+)$")
    n = tonumber(n)
    if stack and n and n > 0 then
      root.value = root.value + n
      local node = root
      for frame in stack:gmatch("[^;]+") do
        local child = node.children[frame]
        if not child then
          child = { name = frame, value = 0, children = {} }
          node.children[frame] = child
        end
        child.value = child.value + n
        node = child
      end
    end
  end
  return root
end

--- SVG text for the folded stacks. opts: title, width (px, default 1200).
function _M.svg(folded, opts)
  opts = opts or {}
  local width = opts.width or 1200
  local frame_h, pad, top = 17, 10, 40
  local root = _M.tree(folded)
  local total = root.value
  local depth = 0
  local function measure(node, d)
    if d > depth then
      depth = d
    end
    for _, c in pairs(node.children) do
      measure(c, d + 1)
    end
  end
  measure(root, 0)
  local height = top + (depth + 1) * frame_h + pad * 2
  local out = {}
  out[#out + 1] = format('<?xml version="1.0" standalone="no"?>\n<svg version="1.1" width="%d" ' ..
    'height="%d" viewBox="0 0 %d %d" xmlns="http://www.w3.org/2000/svg">', width, height, width, height)
  out[#out + 1] = '<style>text{font-family:Verdana,sans-serif;font-size:12px;fill:#000}' ..
    'rect:hover{stroke:#000;stroke-width:0.5}</style>'
  out[#out + 1] = format('<rect x="0" y="0" width="%d" height="%d" fill="#fdf6e3"/>', width, height)
  out[#out + 1] = format('<text x="%d" y="24" text-anchor="middle" style="font-size:17px">%s</text>',
    width / 2, escape(opts.title or "moonwire flame graph"))
  if total == 0 then
    out[#out + 1] = format('<text x="%d" y="%d" text-anchor="middle">no samples: was the handler ' ..
      'running Lua code?</text>', width / 2, top + 20)
    out[#out + 1] = "</svg>\n"
    return concat(out, "\n")
  end
  local scale = (width - 2 * pad) / total
  local function draw(node, x, d)
    local w = node.value * scale
    if w < 0.3 then
      return
    end
    local y = height - pad - (d + 1) * frame_h
    local label = format("%s (%d samples, %.2f%%)", node.name, node.value, 100 * node.value / total)
    out[#out + 1] = format('<g><title>%s</title><rect x="%.1f" y="%d" width="%.1f" height="%d" ' ..
      'fill="%s" rx="2"/>', escape(label), x, y, w, frame_h - 1, colour(node.name))
    local chars = floor((w - 6) / 7)
    if chars >= 3 then
      local text = node.name
      if #text > chars then
        text = text:sub(1, chars - 2) .. ".."
      end
      out[#out + 1] = format('<text x="%.1f" y="%d">%s</text>', x + 3, y + frame_h - 5, escape(text))
    end
    out[#out + 1] = "</g>"
    local names = {}
    for name in pairs(node.children) do
      names[#names + 1] = name
    end
    sort(names)
    local cx = x
    for _, name in ipairs(names) do
      local c = node.children[name]
      draw(c, cx, d + 1)
      cx = cx + c.value * scale
    end
  end
  draw(root, pad, 0)
  out[#out + 1] = "</svg>\n"
  return concat(out, "\n")
end

return _M
