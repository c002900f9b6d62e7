#!/usr/bin/env bash
# Runs the real Distlab window under Xvfb for a few seconds and saves a PNG.
#
#   scripts/screenshot.sh [OUT.png] [SECONDS] [-- extra distlab args]
#
# Needs: xvfb, imagemagick (import), libgl1-mesa-dri; xdotool (optional) to
# capture just the window. Uses the release build if
# it exists, else the debug build; builds the workspace binaries if neither.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/screenshot.png}
secs=${2:-6}
shift $(( $# > 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift

if [ -x target/release/distlab ] && [ -x target/release/distlab-node ]; then
  bin=target/release
else
  [ -x target/debug/distlab ] && [ -x target/debug/distlab-node ] || cargo build --workspace
  bin=target/debug
fi

tmp=$(mktemp -d)
chmod 700 "$tmp"
display=:$(( 90 + RANDOM % 9 ))
Xvfb "$display" -screen 0 1280x800x24 -nolisten tcp >"$tmp/xvfb.log" 2>&1 &
xvfb=$!
app=
cleanup() {
  [ -n "$app" ] && kill -TERM "$app" 2>/dev/null && wait "$app" 2>/dev/null || true
  kill "$xvfb" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
sleep 1

DISPLAY=$display XDG_RUNTIME_DIR=$tmp XDG_DATA_HOME=$tmp/data \
  "$bin/distlab" --listen 127.0.0.1:0 --data-dir "$tmp/nodes" "$@" >"$tmp/app.log" 2>&1 &
app=$!
sleep "$secs"
if ! kill -0 "$app" 2>/dev/null; then
  echo "distlab exited early:" >&2
  cat "$tmp/app.log" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
# The app's window if xdotool can find it, else the whole screen.
window=$(DISPLAY=$display xdotool search --name '^Distlab' 2>/dev/null | head -n 1 || true)
DISPLAY=$display import -window "${window:-root}" "$out"
echo "wrote $out"
