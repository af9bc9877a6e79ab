#!/usr/bin/env bash
# Make a machine ready for gearstash's demo, tests and benchmark. Idempotent; run as root on
# Debian 12 (sudo is used when not root). From any directory:  bash scripts/setup.sh
#
#   1. Debian packages: gearmand, the C gearman tools, memcached, redis-server (tests start their
#      own for restarts, AUTH and TLS), postgresql (initdb for the tests' private server), openssl,
#      php-cli + the gearman, redis, memcached, pgsql,
#      sqlite3 and mysql extensions
#      (apt is skipped when all of them are already there, unless GEARSTASH_SETUP_FORCE=1);
#   2. .venv with python3 (>= 3.11), created when missing or broken;
#   3. pip install -e '.[test,postgres,mysql,redis,memcache]' pygearman into .venv
#      (skipped when pyproject.toml has not changed since the last install; GEARSTASH_SETUP_FORCE=1
#      forces it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
say() { printf 'setup: %s\n' "$*"; }

# -- 1. system packages -------------------------------------------------------------------------
APT_PACKAGES=(gearman-job-server gearman-tools memcached redis-server postgresql openssl
              php-cli php-gearman php-redis php-memcached php-pgsql php-sqlite3 php-mysql)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

system_ready() {
    have gearmand && have gearman && have gearadmin && have memcached && have redis-server &&
        have openssl && have php || return 1
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || return 1  # private servers in tests
    php -r 'foreach (["gearman", "redis", "memcached", "pgsql", "pdo_sqlite", "pdo_mysql"] as $e)
                if (!extension_loaded($e)) exit(1);' >/dev/null 2>&1
}

if [ "${GEARSTASH_SETUP_FORCE:-0}" != 1 ] && system_ready; then
    say "gearmand, gearman tools, memcached, redis-server and the php extensions present: apt skipped"
else
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { say "not root and no sudo: cannot apt-get install"; exit 1; }
        SUDO=(sudo)
    fi
    say "apt-get update"
    "${SUDO[@]}" apt-get update -qq
    say "apt-get install ${APT_PACKAGES[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
    system_ready || { say "packages installed but gearmand/gearman/memcached/php-gearman still missing"; exit 1; }
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
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        # Debian's own python3 needs python3-venv for ensurepip.
        rm -rf .venv
        say "python3 -m venv failed: installing python3-venv"
        SUDO=()
        [ "$(id -u)" -ne 0 ] && SUDO=(sudo)
        "${SUDO[@]}" apt-get update -qq
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        "$PYTHON" -m venv .venv
    fi
fi

# -- 3. python packages -------------------------------------------------------------------------
EXTRAS='test,postgres,mysql,redis,memcache'
STAMP=.venv/.gearstash-setup
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) $EXTRAS pygearman"

if [ "${GEARSTASH_SETUP_FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] &&
    [ -x .venv/bin/gearstash ] && .venv/bin/python -c 'import gearstash' 2>/dev/null; then
    say "python packages up to date (pyproject.toml unchanged): pip skipped"
else
    rm -f "$STAMP"
    say "pip install -e '.[$EXTRAS]' pygearman"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]" pygearman
    printf '%s\n' "$WANT" >"$STAMP"
    say "python packages installed"
fi

say "ready in $ROOT"
