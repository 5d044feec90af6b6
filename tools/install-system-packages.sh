#!/bin/sh
# Installs the Debian packages the sandbox and the tests need, when this machine lacks them:
# bookworm's redis-server and redis-cli (Redis 7.0: the older release of the version-roll
# test; the engines the stack deploys come from tools/fetch-engines.sh), shellcheck (make
# lint), dash (the pods' /bin/sh), libnss-wrapper (the TLS tests and the sandbox resolve the
# nodes' announced DNS names through a hosts file of their own: sandbox/name_resolution.py),
# nftables (`sandbox partition` cuts pods off with rules in a table of the sandbox's own:
# sandbox/partitions.py),
# apt's download tools and Debian's archive keys (for tools/fetch-engines.sh), and on a bare
# image make, python3 and its venv module (the Makefile builds .venv). Idempotent: with
# everything present it only runs the checks. POSIX sh.
set -eu

missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v redis-cli >/dev/null 2>&1 || missing="$missing redis-tools"
command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
command -v dash >/dev/null 2>&1 || missing="$missing dash"
# Debian installs nft in /usr/sbin, which a non-root PATH may lack.
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing="$missing nftables"
# A library, not a command: present when any architecture's copy is readable.
nss_wrapper_found=""
for library in /usr/lib/*/libnss_wrapper.so /usr/lib/libnss_wrapper.so /usr/lib64/libnss_wrapper.so; do
    [ -r "$library" ] && nss_wrapper_found=yes
done
[ -n "$nss_wrapper_found" ] || missing="$missing libnss-wrapper"
command -v make >/dev/null 2>&1 || missing="$missing make"
command -v dpkg-deb >/dev/null 2>&1 || missing="$missing dpkg"
[ -r /usr/share/keyrings/debian-archive-keyring.gpg ] || missing="$missing debian-archive-keyring"
# Debian ships the venv module without ensurepip; `python3 -m venv` needs both.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$missing python3 python3-venv"
[ -n "$missing" ] || exit 0

echo "installing:$missing"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get here: install these packages (Debian names) by hand:$missing" >&2
    exit 1
fi
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "not root and no sudo: run as root, or install by hand:$missing" >&2
        exit 1
    fi
    sudo_cmd="sudo"
fi
$sudo_cmd apt-get update -qq
# DEBIAN_FRONTEND goes through env(1): sudo's env_reset would drop a plain prefix assignment,
# and apt could then stop at a debconf prompt. $missing is a word list on purpose.
# shellcheck disable=SC2086
$sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
