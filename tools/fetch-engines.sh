#!/bin/sh
# Brings Redis and Valkey, at the lines the product deploys, and the monitoring tools into
# .engines/ (git-ignored), without touching this machine's apt sources: Debian unstable's
# redis-server/redis-tools, valkey-server/valkey-tools, prometheus-redis-exporter and promtool
# are downloaded through a private apt configuration, unpacked with the libraries they link
# against (unstable's glibc is newer than bookworm's), and run through the unpacked loader by
# one wrapper per binary:
#   .engines/current/redis/bin/redis-server, .engines/current/redis/bin/redis-cli,
#   .engines/current/valkey/bin/valkey-server, .engines/current/valkey/bin/valkey-cli,
#   .engines/current/monitoring/bin/redis_exporter, .engines/current/monitoring/bin/promtool.
# Unstable's versions are not pinned (old ones leave its archive within days); instead
# tests/integration/test_engine_binaries.py holds each engine's major.minor to the line
# components/engines.py tests, and the exporter's to the exporter image the pods run
# (components/stack_settings.py). A folder whose package versions still match what the
# archive serves is reused as it is; offline, a complete folder is reused with a warning.
# Each fetch unpacks into a build folder of its own and then moves the `current` link at
# once, so an interrupted run never leaves half a folder in use. Idempotent, POSIX sh;
# amd64 only.
#
# Usage: sh tools/fetch-engines.sh [folder]     (default: .engines beside tools/)
# Environment: ENGINES_DEBIAN_MIRROR (http://deb.debian.org/debian).
set -eu

project=$(cd "$(dirname "$0")/.." && pwd)
target=${1:-$project/.engines}
mirror=${ENGINES_DEBIAN_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
roots="redis-server redis-tools valkey-server valkey-tools prometheus-redis-exporter promtool"
# Each wrapper (<folder>/bin/<name>) and the binary of the unpacked usr/bin it runs.
binaries="redis/bin/redis-server:redis-server redis/bin/redis-cli:redis-cli
valkey/bin/valkey-server:valkey-server valkey/bin/valkey-cli:valkey-cli
monitoring/bin/redis_exporter:prometheus-redis-exporter monitoring/bin/promtool:promtool"

architecture=$(dpkg --print-architecture)
if [ "$architecture" != amd64 ]; then
    echo "fetch-engines: this machine is $architecture; the unpacked loader and libraries are amd64 only" >&2
    exit 1
fi
mkdir -p "$target"
target=$(cd "$target" && pwd)
apt_dir="$target/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
echo "deb [signed-by=$keyring] $mirror unstable main" >"$apt_dir/sources.list"

# Everything apt reads or writes stays under $apt_dir; the machine's dpkg status is left out
# so that bookworm's installed packages never satisfy a dependency of unstable's.
apt_private() {
    tool=$1
    shift
    "$tool" -q \
        -o Dir::Etc::sourcelist="$apt_dir/sources.list" \
        -o Dir::Etc::sourceparts=/nonexistent \
        -o Dir::State::Lists="$apt_dir/lists" \
        -o Dir::Cache="$apt_dir/cache" \
        -o Dir::State::status=/dev/null \
        -o APT::Architecture=amd64 \
        -o Debug::NoLocking=true \
        -o APT::Sandbox::User="$(id -un)" \
        "$@"
}

# Whether every wrapper of a build folder runs (the exporter and promtool take --version too).
wrappers_run() {
    for pair in $binaries; do
        "$1/${pair%%:*}" --version >/dev/null 2>&1 || return 1
    done
}

engines_run() {
    wrappers_run "$target/current"
}

if ! apt_private apt-get update >"$apt_dir/update.log" 2>&1; then
    if engines_run; then
        echo "fetch-engines: the Debian archive is out of reach; reusing $target as it is:" >&2
        cat "$target/current/packages.txt" >&2
        exit 0
    fi
    cat "$apt_dir/update.log" >&2
    echo "fetch-engines: cannot read $mirror unstable and $target is incomplete" >&2
    exit 1
fi

candidate() {
    apt_private apt-cache show "$1" | sed -n 's/^Version: //p' | head -n 1
}

wanted=""
for package in $roots; do
    version=$(candidate "$package")
    [ -n "$version" ] || {
        echo "fetch-engines: $mirror unstable has no $package" >&2
        exit 1
    }
    wanted="$wanted$package $version
"
done

if [ -f "$target/current/packages.txt" ] && [ "$(cat "$target/current/packages.txt")" = "$(printf "%s" "$wanted")" ] &&
    engines_run; then
    echo "fetch-engines: $target is current:"
    cat "$target/current/packages.txt"
    exit 0
fi

# The engines and the shared libraries they need, following library dependencies only:
# systemd, adduser and the rest of a package's install-time needs are not needed to run it.
closure=""
pending=$roots
while [ -n "$pending" ]; do
    closure="$closure $pending"
    # shellcheck disable=SC2086
    found=$(apt_private apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances $pending |
        sed -n 's/^ *|\{0,1\}\(Pre\)\{0,1\}Depends: \([^ <]*\).*/\2/p' | sed 's/:any$//' |
        grep -E '^(lib[a-z0-9.+-]*|zlib1g|gcc-[0-9]+-base)$' | sort -u)
    pending=""
    for package in $found; do
        case " $closure $pending " in
            *" $package "*) ;;
            *) pending="$pending $package" ;;
        esac
    done
done

# Builds of earlier runs that never became current (interrupted) go first.
in_use=""
if [ -L "$target/current" ]; then
    in_use="$target/$(readlink "$target/current")"
fi
for old in "$target"/build-*; do
    [ -e "$old" ] || continue
    [ "$old" = "$in_use" ] || rm -rf "$old"
done
build="build-$(date +%Y%m%d%H%M%S)-$$"
work="$target/$build"
mkdir -p "$work/debs" "$work/root"
echo "fetch-engines: downloading$closure"
# shellcheck disable=SC2086
(cd "$work/debs" && apt_private apt-get download $closure >/dev/null)
for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$work/root"
done

rm -rf "$work/debs"
# The wrappers name the build folder itself, which never moves: only `current` does.
loader="$work/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
libraries="$work/root/usr/lib/x86_64-linux-gnu:$work/root/lib/x86_64-linux-gnu"
# The exporter and promtool are Go programs built with cgo, dynamic executables like the
# engines (`file` says so): the same loader runs them all.
for pair in $binaries; do
    wrapper="$work/${pair%%:*}"
    binary=${pair#*:}
    mkdir -p "$(dirname "$wrapper")"
    # The loader is the unpacked glibc's own; argv[0] stays the binary's path, so the
    # process is still recognisable as $binary (and a server still knows it is one).
    cat >"$wrapper" <<EOF
#!/bin/sh
# Written by tools/fetch-engines.sh: Debian unstable's $binary through its own loader.
exec "$loader" --library-path "$libraries" "$work/root/usr/bin/$binary" "\$@"
EOF
    chmod 0755 "$wrapper"
done

printf "%s" "$wanted" >"$work/packages.txt"
if ! wrappers_run "$work"; then
    for pair in $binaries; do
        "$work/${pair%%:*}" --version >/dev/null || echo "fetch-engines: ${pair%%:*} does not run" >&2
    done
    exit 1
fi
# One rename moves `current` to the new build; the previous build goes after it.
previous=""
if [ -L "$target/current" ]; then
    previous="$target/$(readlink "$target/current")"
fi
ln -sfn "$build" "$target/current.new"
mv -T "$target/current.new" "$target/current"
# Folders of the layout before `current` existed.
rm -rf "$target/root" "$target/redis" "$target/valkey" "$target/packages.txt" "$target/unpack.new"
if [ -n "$previous" ] && [ "$previous" != "$work" ]; then
    rm -rf "$previous"
fi
for binary in redis/bin/redis-server valkey/bin/valkey-server monitoring/bin/redis_exporter; do
    "$target/current/$binary" --version
done
"$target/current/monitoring/bin/promtool" --version | head -n 1
