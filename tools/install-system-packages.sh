#!/bin/sh
# Installs the Debian packages the sandbox and the tests need, when this machine lacks them:
# redis-server and redis-cli (real Redis on loopback), shellcheck and dash (the pods' /bin/sh),
# and on a bare image make, python3 and its venv module (the Makefile builds .venv).
set -eu

missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v redis-cli >/dev/null 2>&1 || missing="$missing redis-tools"
command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
command -v dash >/dev/null 2>&1 || missing="$missing dash"
command -v make >/dev/null 2>&1 || missing="$missing make"
# Debian ships the venv module without ensurepip; `python3 -m venv` needs both.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$missing python3 python3-venv"
[ -n "$missing" ] || exit 0

echo "installing:$missing"
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
$sudo_cmd apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq $missing >/dev/null
