#!/usr/bin/env bash
# Runs the busted specs and ends with one plain summary line ("N passed, N failed"), exiting
# with busted's own status.
set -uo pipefail
out=$(mktemp)
trap 'rm -f "$out"' EXIT
luajit /usr/bin/busted "$@" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
line=$(grep -E '^[0-9]+ successes / [0-9]+ failures / [0-9]+ errors' "$out" | tail -1)
if [ -n "$line" ]; then
  read -r ok _ _ failed _ _ errors _ <<<"$line"
  echo "specs: $ok passed, $((failed + errors)) failed"
fi
exit "$status"
