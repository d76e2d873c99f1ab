#!/usr/bin/env bash
# `make run`: serves the default example in the foreground until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ADDR="${MOONWIRE_LISTEN:-127.0.0.1:9000}"
if [ -f examples/chat/app.lua ]; then
  echo "moonwire: WebSocket chat on http://$ADDR/ (open it in two browser tabs; Ctrl-C stops)"
  exec bin/moonwire run examples/chat/app.lua --listen "$ADDR" --loops "${MOONWIRE_LOOPS:-2}"
fi
echo "moonwire: line chat on $ADDR — join with: nc ${ADDR%:*} ${ADDR##*:}   (Ctrl-C stops)"
exec bin/moonwire run examples/chat_lines/chat.lua --listen "$ADDR"
