#!/usr/bin/env bash
# The bundled demo: sets up .venv, renders the sample clip (first run only), makes sure a
# Mosquitto broker listens on localhost:1883 (starting one if none does), runs the daemon
# (`edged run -c config/demo.yaml`, log in samples/edged-demo.log) and shows what it
# publishes with `edged watch`. Runs until Ctrl-C, or for SECONDS when given:
#     bash scripts/demo.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f samples/shapes.mp4 ] || .venv/bin/python scripts/make_sample_clip.py --seed 7 --frames 300 --out samples/shapes.mp4

listening() { (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; }
if ! listening; then
    mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    echo "demo: no broker on localhost:1883; starting $mosquitto (loopback only)" >&2
    "$mosquitto" -p 1883 -d
    for _ in $(seq 50); do listening && break; sleep 0.1; done
fi

.venv/bin/edged run -c config/demo.yaml > samples/edged-demo.log 2>&1 &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon; echo "demo: daemon stopped (log: samples/edged-demo.log)" >&2' EXIT
echo "demo: daemon started (pid $daemon, log: samples/edged-demo.log); watching its messages" >&2
.venv/bin/edged watch --device demo ${1:+--duration "$1"}
