#!/usr/bin/env bash
# Builds, once, a Debian root that boots systemd under systemd-nspawn, for the tests that run edged
# under a real systemd (tests/test_systemd_boot.py): Debian bookworm (minbase) with systemd, D-Bus,
# Python and what scripts/install.sh would otherwise fetch with apt, plus a wheelhouse of edged's
# dependencies (/var/cache/edged-wheels, systemd-python built there), so that install.sh runs offline
# inside it in a minute. Run as root:
#
#   sudo bash scripts/systemd-test-root.sh [ROOT]
#
# ROOT defaults to $EDGED_SYSTEMD_ROOT, else /var/tmp/edged-systemd-root: outside the checkout, kept
# between runs. A root already built is reused; its wheelhouse is made again when pyproject.toml
# changes. The first build downloads about 250 MB (Debian's packages and PyPI's wheels) and took
# 70 s on this project's 2-core VMs (a slower mirror or link: a few minutes). Installs debootstrap and
# systemd-nspawn (systemd-container) with apt where missing.
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
root="${1:-${EDGED_SYSTEMD_ROOT:-/var/tmp/edged-systemd-root}}"
mirror="${EDGED_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
packages=systemd,systemd-sysv,dbus,procps,ca-certificates,python3,python3-venv,python3-dev,gcc,pkg-config,libsystemd-dev
wheels=/var/cache/edged-wheels  # inside the root

say() { echo "systemd-test-root: $*" >&2; }
die() { echo "systemd-test-root: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and systemd-nspawn need it)"
tools=()
command -v debootstrap >/dev/null || tools+=(debootstrap)
command -v systemd-nspawn >/dev/null || tools+=(systemd-container)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || tools+=(debian-archive-keyring)  # Ubuntu hosts
if [ ${#tools[@]} -gt 0 ]; then
    say "installing ${tools[*]} with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${tools[@]}" >/dev/null \
        || die "could not install ${tools[*]}"
fi

started=$SECONDS
if [ ! -x "$root/lib/systemd/systemd" ]; then
    say "building a Debian bookworm root in $root (debootstrap, about a minute)"
    rm -rf "$root.partial"
    debootstrap --variant=minbase --include="$packages" --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
        bookworm "$root.partial" "$mirror" >"$root.log" 2>&1 \
        || die "debootstrap failed; its log: $root.log"
    # No console logins and nothing that waits for hardware: the tests reach the container with nsenter.
    chroot "$root.partial" systemctl mask --quiet console-getty.service getty@.service \
        systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer
    echo edged-test > "$root.partial/etc/hostname"
    rm -f "$root.partial"/var/cache/apt/archives/*.deb
    mv "$root.partial" "$root"
fi

want="$(cat "$src/pyproject.toml" "$0" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$root/.edged-wheels" 2>/dev/null)" != "$want" ]; then
    say "building the wheelhouse of edged's dependencies in $root$wheels (pip, under a minute)"
    rm -rf "${root:?}$wheels" "$root/.edged-wheels"  # no stamp until the wheelhouse is whole again
    # pip inside the root, so that the wheels fit its Python; the checkout is copied, since pip builds in the tree.
    # The host's CA bundle, for hosts that reach PyPI through a proxy of their own.
    systemd-nspawn --quiet --register=no --keep-unit -D "$root" --bind-ro="$src:/mnt/edged" --setenv=WHEELS="$wheels" \
        --bind-ro=/etc/ssl/certs/ca-certificates.crt:/mnt/host-ca.crt --setenv=PIP_CERT=/mnt/host-ca.crt \
        /bin/bash -euc '
            rm -rf /tmp/edged /tmp/pip-venv
            mkdir /tmp/edged
            cp -r /mnt/edged/pyproject.toml /mnt/edged/README.md /mnt/edged/edged /mnt/edged/models /tmp/edged/
            python3 -m venv /tmp/pip-venv
            /tmp/pip-venv/bin/pip install -q --disable-pip-version-check --upgrade pip
            /tmp/pip-venv/bin/pip wheel -q --disable-pip-version-check -w "$WHEELS" "/tmp/edged[systemd]" \
                pip setuptools wheel
            rm -f "$WHEELS"/edged-*.whl
            rm -rf /tmp/edged /tmp/pip-venv' >"$root.log" 2>&1 \
        || die "the wheelhouse build failed; its log: $root.log"
    echo "$want" > "$root/.edged-wheels"
fi
say "ready: $root ($(du -sh "$root" | cut -f1), $((SECONDS - started)) s)"
