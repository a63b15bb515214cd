#!/usr/bin/env bash
# Installs edged from this checkout as a systemd service on this device (Debian, Ubuntu,
# Raspberry Pi OS, Jetson Linux). Run as root:
#
#   sudo bash scripts/install.sh [--now]
#
# - the Debian packages it needs (python3-venv, and what systemd-python builds with)
# - a system user `edged`, in the video group (and render where it exists)
# - a venv in /opt/edged/venv with edged[systemd]; on Jetson made with
#   --system-site-packages, to use NVIDIA's onnxruntime-gpu and OpenCV
# - /etc/edged/edged.yaml from config/edged.yaml, only when absent (never overwritten)
# - /etc/systemd/system/edged.service, enabled; --now also (re)starts it
#
# Safe to run again: it upgrades edged and the unit, and keeps the config.
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
venv=/opt/edged/venv
unit=/etc/systemd/system/edged.service
config=/etc/edged/edged.yaml

say() { echo "install.sh: $*"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }

now=false
for arg in "$@"; do
    case "$arg" in
        --now) now=true ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) die "unknown argument $arg (usage: install.sh [--now])" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root: sudo bash $0 $*"
[ -d /run/systemd/system ] || die "systemd is not running on this machine; edged installs as a systemd service"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian-based systems"
[ -f "$src/config/edged.yaml" ] || die "$src/config/edged.yaml not found: run this from an edged checkout"
[ -f "$src/systemd/edged.service" ] || die "$src/systemd/edged.service not found: run this from an edged checkout"

jetson=false
[ -f /etc/nv_tegra_release ] && jetson=true

# Debian packages: the venv, and the compiler, headers and pkg-config that building
# systemd-python needs.
missing=()
for package in python3-venv python3-dev gcc pkg-config libsystemd-dev; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "edged needs Python >= 3.10; python3 here is $(python3 -V 2>&1)"

# The service user. Cameras and Jetson's GPU nodes belong to video, /dev/dri/renderD* to
# render. The unit names only video in SupplementaryGroups= (a missing group there stops
# the start); render comes from the user's membership, granted here where it exists.
getent group video >/dev/null || { say "creating group video"; groupadd --system video; }
if ! getent passwd edged >/dev/null; then
    say "creating system user edged"
    useradd --system --user-group --home-dir /var/lib/edged --no-create-home \
        --shell /usr/sbin/nologin --comment "edged object detection" edged
fi
for group in video render; do
    if getent group "$group" >/dev/null && ! id -nG edged | tr ' ' '\n' | grep -qx "$group"; then
        say "adding user edged to group $group"
        usermod -a -G "$group" edged
    fi
done

# The venv, owned by root and read-only to the service.
if [ ! -x "$venv/bin/python" ]; then
    if $jetson; then
        say "Jetson: creating $venv with --system-site-packages (NVIDIA's onnxruntime-gpu and OpenCV)"
        python3 -m venv --system-site-packages "$venv"
    else
        say "creating $venv"
        python3 -m venv "$venv"
    fi
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip
if $jetson; then
    # edged's own requirements, except onnxruntime and OpenCV: pip would put its CPU-only
    # wheels over NVIDIA's builds. numpy stays at 1.x, which those builds are compiled against.
    say "installing edged from $src (keeping NVIDIA's onnxruntime and OpenCV)"
    "${pip[@]}" --no-deps "$src"
    mapfile -t requirements < <("$venv/bin/python" - <<'EOF'
import re
from importlib.metadata import requires

for requirement in requires("edged") or []:
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")
    extra = re.search(r"""extra\s*==\s*["']([^"']+)""", requirement)
    if name in ("onnxruntime", "opencv-python-headless") or (extra and extra.group(1) != "systemd"):
        continue
    print(requirement.split(";")[0].strip())
EOF
    )
    "${pip[@]}" "${requirements[@]}" "numpy<2"
    "$venv/bin/python" -c 'import onnxruntime, cv2' 2>/dev/null \
        || say "warning: onnxruntime or cv2 does not import in $venv; install NVIDIA's onnxruntime-gpu wheel for your JetPack into the system python3, and python3-opencv (or JetPack's OpenCV)"
else
    say "installing edged from $src"
    "${pip[@]}" "${src}[systemd]"
fi

# The config: installed once, never overwritten (remote pushes persist in /var/lib/edged).
install -d -m 0755 /etc/edged
if [ -e "$config" ]; then
    say "keeping the existing $config"
else
    say "installing $config"
    install -m 0640 -o root -g edged "$src/config/edged.yaml" "$config"
fi

say "installing $unit"
install -m 0644 "$src/systemd/edged.service" "$unit"
systemctl daemon-reload
systemctl enable --quiet edged.service
if $now; then
    say "(re)starting edged"
    systemctl restart edged.service
    say "started; follow it with: journalctl -u edged -f"
else
    say "enabled; start it with: systemctl start edged (logs: journalctl -u edged -f)"
fi
