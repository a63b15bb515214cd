#!/usr/bin/env bash
# The bundled demo: sets up .venv, renders the sample clip (first run only), and runs
# `edged detect` on it with the demo detector, printing a summary line per frame.
# An annotated copy goes to samples/shapes-annotated.mp4. Extra arguments go to edged detect.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f samples/shapes.mp4 ] || .venv/bin/python scripts/make_sample_clip.py --seed 7 --frames 300 --out samples/shapes.mp4
exec .venv/bin/edged detect samples/shapes.mp4 --format summary --save-video samples/shapes-annotated.mp4 "$@"
