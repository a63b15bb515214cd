#!/usr/bin/env bash
# Creates ./.venv with edged and its test tools, installing the Debian packages it needs
# (python3-venv; mosquitto for the demo broker and the tests; openssl for the TLS tests) with
# apt when they are missing, and systemd's systemd-analyze (to verify the unit) where apt can
# install it: without it that one test is skipped. Safe to run again: it only reinstalls
# when pyproject.toml has changed.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || packages+=(mosquitto)
command -v openssl >/dev/null || packages+=(openssl)
optional=()
command -v systemd-analyze >/dev/null || optional+=(systemd)
if [ $((${#packages[@]} + ${#optional[@]})) -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${packages[*]} ${optional[*]} with apt" >&2
    $sudo apt-get update -qq
    if [ ${#packages[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
    fi
    if [ ${#optional[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${optional[@]}" >/dev/null \
            || echo "setup: could not install ${optional[*]}; the unit-verification test will be skipped" >&2
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
