#!/usr/bin/env bash
# Entry point for a fresh Debian machine that has only Rust, Python 3 and root:
# installs the system packages the build and tests need, then runs `make "$@"`.
#   ./make.sh demo    build, index the bundled fixtures, serve them on 127.0.0.1:9000
#   ./make.sh test    every test (Rust and Python clients)
#   ./make.sh bench   benchmarks against kerchunk and nginx
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v make >/dev/null || need+=(make)
command -v cc >/dev/null || need+=(gcc)
command -v c++ >/dev/null || need+=(g++)
command -v m4 >/dev/null || need+=(m4)
command -v pkg-config >/dev/null || need+=(pkg-config)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v curl >/dev/null || need+=(curl)
# The tests start a real nginx (a TLS-less reverse proxy in front of the gateway, and the
# load balancer in front of replicas), PostgreSQL (the key database replicas share), and a
# headless Chromium that reads the gateway from a page of another origin (CORS), and an
# OpenID Provider on Node.js.
if [[ " $* " == *" test "* || " $* " == *" bench "* ]]; then
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
fi
if [[ " $* " == *" test "* ]]; then
    command -v chromium >/dev/null || need+=(chromium)
    # The OpenID Provider the identity tests log in with (npm's oidc-provider).
    command -v node >/dev/null || need+=(nodejs)
    command -v npm >/dev/null || need+=(npm)
fi
if [[ " $* " == *" bench "* ]]; then
    command -v wrk >/dev/null || need+=(wrk)
    command -v node >/dev/null || need+=(nodejs)
    command -v npm >/dev/null || need+=(npm)
fi
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
exec make "$@"
