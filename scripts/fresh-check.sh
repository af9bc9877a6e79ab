#!/usr/bin/env bash
# Prove "two commands on any fresh machine": build a minimal Debian 12 root (debootstrap
# --variant=minbase) in a temporary folder, install only git and make there, clone this
# repository into it, run `make demo` (with the network: setup installs from Debian and PyPI),
# then `bash .ci/run` in a network namespace of its own (only loopback), so nothing on this
# machine can be reached. Not part of CI: it takes many minutes. Run as root:
#
#   bash scripts/fresh-check.sh [BRANCH]        (default: the checked-out branch)
#
# KEEP=1 keeps the root folder afterwards (its path is printed). The host's CA bundle, pip
# configuration (/etc/pip.conf, /etc/xdg/pip, ~/.config/pip, PIP_* variables) and Debian apt
# sources are copied into the root so it reaches the same registries as this machine.
set -euo pipefail

say() { printf '\nfresh-check: %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "fresh-check: run as root (debootstrap, chroot, unshare)"; exit 1; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BRANCH=${1:-$(git -C "$REPO" rev-parse --abbrev-ref HEAD)}
COMMIT=$(git -C "$REPO" rev-parse "$BRANCH")

if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

# The Debian mirror this machine's apt uses (deb822 sources, else sources.list).
MIRROR=$(
    {
        { grep -h -A3 '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } |
            awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}'
        { grep -h '^deb .* bookworm ' /etc/apt/sources.list 2>/dev/null || true; } | awk '{print $2; exit}'
    } | head -1 || true
)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

ROOTFS=$(mktemp -d /var/tmp/gearstash-fresh.XXXXXX)
chmod 755 "$ROOTFS"  # it is the root's "/": the servers' own users must get through it
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        say "kept $ROOTFS"
    else
        rm -rf --one-file-system "$ROOTFS"
    fi
}
trap cleanup EXIT

START=$(date +%s)
say "debootstrap --variant=minbase bookworm $ROOTFS $MIRROR"
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.debootstrap.log" 2>&1 || {
    tail -20 "$ROOTFS.debootstrap.log"
    exit 1
}
rm -f "$ROOTFS.debootstrap.log"

say "copying the host's apt sources, CA bundle and pip configuration"
if compgen -G '/etc/apt/sources.list.d/debian*.sources' >/dev/null; then
    : >"$ROOTFS/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/debian*.sources "$ROOTFS/etc/apt/sources.list.d/"
fi
CA=/etc/ssl/certs/ca-certificates.crt
mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
# the root's own bundle is rebuilt by its ca-certificates package: add the host's to it
cp "$CA" "$ROOTFS/usr/local/share/ca-certificates/host-bundle.crt"
cp "$CA" "$ROOTFS/etc/host-ca-bundle.pem"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOTFS/etc/pip.conf"
[ -d /etc/xdg/pip ] && mkdir -p "$ROOTFS/etc/xdg" && cp -r /etc/xdg/pip "$ROOTFS/etc/xdg/"
[ -d "$HOME/.config/pip" ] && mkdir -p "$ROOTFS/root/.config" && cp -r "$HOME/.config/pip" "$ROOTFS/root/.config/"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"

# The environment inside: nothing of this machine's but the PIP_* settings and the CA bundle.
ENV=(env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
     LANG=C.UTF-8 TERM=dumb SSL_CERT_FILE=/etc/host-ca-bundle.pem
     GIT_SSL_CAINFO=/etc/host-ca-bundle.pem REQUESTS_CA_BUNDLE=/etc/host-ca-bundle.pem)
while IFS='=' read -r name value; do
    case "$name" in
        PIP_CERT) ENV+=("PIP_CERT=/etc/host-ca-bundle.pem") ;;
        PIP_*) ENV+=("$name=$value") ;;
    esac
done < <(env)

say "the repository: $BRANCH at $COMMIT"
git clone -q --bare --branch "$BRANCH" "$REPO" "$ROOTFS/srv/gearstash.git"

# Run "$@" (a script for bash) in the root, with /proc, /sys, /dev of its own mount namespace
# (they vanish with it). NET=none: in a network namespace of its own, loopback only.
in_root() {
    local net=()
    [ "${NET:-host}" = none ] && net=(--net)
    unshare --mount --propagation private "${net[@]}" -- bash -c '
        set -e
        root=$1; shift
        [ -n "$NO_NET" ] && ip link set lo up
        mount -t proc proc "$root/proc"
        mount -t sysfs sys "$root/sys"
        mount --bind /dev "$root/dev"
        mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts" 2>/dev/null ||
            mount --bind /dev/pts "$root/dev/pts"
        mount -t tmpfs tmpfs "$root/dev/shm"
        mount -t tmpfs tmpfs "$root/run"
        exec chroot "$root" "$@"
    ' in_root "$ROOTFS" "${ENV[@]}" bash -c "$1"
}
export NO_NET=

say "apt-get install git make (nothing else)"
in_root 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git make >/dev/null && dpkg -l | grep -c ^ii | sed "s/^/packages installed: /"'

say "git clone; make demo (setup installs everything from Debian and PyPI)"
DEMO_START=$(date +%s)
in_root 'set -e; git clone -q /srv/gearstash.git /root/gearstash; cd /root/gearstash; git log --oneline -1; command -v python3 || echo "no python3 yet"; make demo'
say "make demo: ok in $(( $(date +%s) - DEMO_START )) s"

say "bash .ci/run in a network namespace of its own (loopback only)"
TEST_START=$(date +%s)
NO_NET=1 NET=none in_root 'set -e; cd /root/gearstash; ip -o link 2>/dev/null || cat /proc/net/dev | tail -n +3 | cut -d: -f1; bash .ci/run'
say "bash .ci/run: ok in $(( $(date +%s) - TEST_START )) s; whole check $(( $(date +%s) - START )) s"
say "PASSED: make demo and bash .ci/run on a minimal Debian 12 root ($COMMIT)"
