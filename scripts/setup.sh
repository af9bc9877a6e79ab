#!/usr/bin/env bash
# Make a machine ready for gearstash's demo, tests and benchmark: on a minimal Debian 12 with
# nothing but this script's bash (no python3, no services), `make demo` and `make test` work
# afterwards. Idempotent and fast when everything is there; run as root (sudo is used when not
# root). From any directory:  bash scripts/setup.sh
#
#   1. Debian packages (apt-get update, then install; skipped when every one of them is already
#      there, unless GEARSTASH_SETUP_FORCE=1): python3 + python3-venv, gearmand and the C gearman
#      tools, memcached, redis-server, postgresql and mariadb-server (the tests start servers
#      of their own from these binaries: nothing needs to run as a service), openssl,
#      ca-certificates, php-cli + the gearman, redis, memcached, pgsql, sqlite3 and mysql
#      extensions, chromium + chromium-driver (the web pages' tests), wrk (bench/web.py's request
#      rate), Perl's Gearman::Worker (a worker
#      behind the proxy in the tests). No service manager is
#      needed: where none runs, the packages' service starts are declined (policy-rc.d).
#   2. .venv with python3 (>= 3.11), created when missing or broken;
#   3. pip install -e '.[test,postgres,mysql,redis,memcache,proxy,web]' pygearman into .venv, with the
#      tools that judge the code (pytest, ruff, mypy, hypothesis, ...) pinned by
#      constraints/tools.txt (skipped when pyproject.toml and the constraints have not changed
#      since the last install; GEARSTASH_SETUP_FORCE=1 forces it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
say() { printf 'setup: %s\n' "$*"; }

# -- 1. system packages -------------------------------------------------------------------------
APT_PACKAGES=(python3 python3-venv ca-certificates openssl
              gearman-job-server gearman-tools memcached redis-server postgresql mariadb-server
              php-cli php-gearman php-redis php-memcached php-pgsql php-sqlite3 php-mysql
              chromium chromium-driver wrk
              libgearman-client-perl gearman-server)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

system_missing() {
    # prints the first thing missing; nothing (and status 0) when all is there
    local tool
    for tool in python3 gearmand gearman gearadmin memcached redis-server openssl php \
        mariadb-install-db mariadbd chromium chromedriver wrk; do
        have "$tool" || { echo "$tool"; return; }
    done
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || { echo "python3-venv"; return; }
    [ -s /etc/ssl/certs/ca-certificates.crt ] || { echo "ca-certificates"; return; }
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || { echo "postgresql"; return; }
    perl -MGearman::Worker -e 1 >/dev/null 2>&1 || { echo "libgearman-client-perl"; return; }
    perl -MGearman::Server -e 1 >/dev/null 2>&1 || { echo "gearman-server"; return; }
    php -r 'foreach (["gearman", "redis", "memcached", "pgsql", "pdo_sqlite", "pdo_mysql"] as $e)
                if (!extension_loaded($e)) exit(1);' >/dev/null 2>&1 || { echo "php extensions"; return; }
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi

apt_install() {
    if [ ${#SUDO[@]} -gt 0 ] && ! command -v sudo >/dev/null 2>&1; then
        say "not root and no sudo: cannot apt-get install $*"
        exit 1
    fi
    # No service manager (a container, a chroot): decline the packages' service starts, which
    # would fail there, or grab the standard ports of the machine outside a chroot.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ] && ! [ -d /run/systemd/system ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        made_policy=1
    fi
    say "apt-get update"
    "${SUDO[@]}" apt-get update -qq
    say "apt-get install $*"
    local status=0
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null || status=$?
    [ "$made_policy" = 1 ] && "${SUDO[@]}" rm -f "$policy"
    return "$status"
}

missing=$(system_missing || true)
if [ "${GEARSTASH_SETUP_FORCE:-0}" != 1 ] && [ -z "$missing" ]; then
    say "system packages present (python3, gearmand, memcached, redis, postgresql, mariadb, php, chromium): apt skipped"
else
    [ -n "$missing" ] && say "missing: $missing"
    apt_install "${APT_PACKAGES[@]}"
    missing=$(system_missing || true)
    [ -z "$missing" ] || { say "packages installed but $missing is still missing"; exit 1; }
    say "system packages ready"
fi

# -- 2. virtualenv ------------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
venv_ok() {
    [ -x .venv/bin/python ] &&
        .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null &&
        .venv/bin/python -m pip --version >/dev/null 2>&1
}

if venv_ok; then
    say ".venv present ($(.venv/bin/python -c 'import sys; print(sys.version.split()[0])'))"
else
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
        say "$PYTHON is $("$PYTHON" --version 2>&1): Python >= 3.11 is needed (set PYTHON=...)"
        exit 1
    }
    if [ -e .venv ]; then
        say ".venv is broken: recreating it"
        rm -rf .venv
    fi
    say "creating .venv with $(command -v "$PYTHON") ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv .venv
fi

# -- 3. python packages -------------------------------------------------------------------------
EXTRAS='test,postgres,mysql,redis,memcache,proxy,web'
STAMP=.venv/.gearstash-setup
CONSTRAINTS=constraints/tools.txt
WANT="$(cat pyproject.toml "$CONSTRAINTS" | sha256sum | cut -d' ' -f1) $EXTRAS pygearman"

if [ "${GEARSTASH_SETUP_FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] &&
    [ -x .venv/bin/gearstash ] && .venv/bin/python -c 'import gearstash' 2>/dev/null; then
    say "python packages up to date (pyproject.toml and $CONSTRAINTS unchanged): pip skipped"
else
    rm -f "$STAMP"
    say "pip install -e '.[$EXTRAS]' pygearman -c $CONSTRAINTS"
    .venv/bin/python -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" \
        -e ".[$EXTRAS]" pygearman
    rm -rf .venv/wheelhouse
    printf '%s\n' "$WANT" >"$STAMP"
    say "python packages installed"
fi

# The wheels of a bare `pip install gearstash` (no extras) and of its build, so the test that
# installs one in a fresh venv needs no network (the suite may run in a namespace without one).
if [ ! -f .venv/wheelhouse/.complete ]; then
    say "pip download the no-extras install's wheels into .venv/wheelhouse"
    rm -rf .venv/wheelhouse
    mapfile -t BARE < <(.venv/bin/python -c '
import tomllib
data = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join(data["project"]["dependencies"] + data["build-system"]["requires"]))')
    .venv/bin/python -m pip download -q --disable-pip-version-check --only-binary=:all: \
        -d .venv/wheelhouse "${BARE[@]}"
    touch .venv/wheelhouse/.complete
fi

say "ready in $ROOT"
