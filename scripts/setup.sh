#!/usr/bin/env bash
# Creates ./.venv with edged and its test tools, installing the Debian packages it needs
# (python3-venv; mosquitto for the demo broker and the tests; openssl for the TLS tests) with
# apt when they are missing, and where apt can install them: systemd's systemd-analyze (to
# verify the unit), and gst-rtsp-server with python3-gi and the x264 encoder (the tests' RTSP
# camera, tests/rtsp_server.py, run by /usr/bin/python3); without them those tests are
# skipped. Safe to run again: it only reinstalls when pyproject.toml has changed.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || packages+=(mosquitto)
command -v openssl >/dev/null || packages+=(openssl)
optional=()
command -v systemd-analyze >/dev/null || optional+=(systemd)
rtsp=()
/usr/bin/python3 tests/rtsp_server.py --check >/dev/null 2>&1 || rtsp+=(python3-gi gir1.2-gst-rtsp-server-1.0
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly)
if [ $((${#packages[@]} + ${#optional[@]} + ${#rtsp[@]})) -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${packages[*]} ${optional[*]} ${rtsp[*]} with apt" >&2
    $sudo apt-get update -qq
    if [ ${#packages[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
    fi
    if [ ${#optional[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${optional[@]}" >/dev/null \
            || echo "setup: could not install ${optional[*]}; the unit-verification test will be skipped" >&2
    fi
    if [ ${#rtsp[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${rtsp[@]}" >/dev/null \
            || echo "setup: could not install ${rtsp[*]}; the RTSP stream tests will be skipped" >&2
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=".venv/.edged-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing edged and its test tools into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[dev]"
    echo "$want" > "$stamp"
fi
