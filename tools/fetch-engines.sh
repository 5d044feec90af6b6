#!/bin/sh
# Brings Redis and Valkey, at the lines the product deploys, into .engines/ (git-ignored),
# without touching this machine's apt sources: Debian unstable's redis-server/redis-tools and
# valkey-server/valkey-tools are downloaded through a private apt configuration, unpacked with
# the libraries they link against (unstable's glibc is newer than bookworm's), and run through
# the unpacked loader by one wrapper per binary:
#   .engines/redis/bin/redis-server, .engines/redis/bin/redis-cli,
#   .engines/valkey/bin/valkey-server, .engines/valkey/bin/valkey-cli.
# Unstable's versions are not pinned (old ones leave its archive within days); instead
# tests/unit/test_engines.py holds each binary's major.minor to its default image's. A folder
# whose package versions still match what the archive serves is reused as it is; offline, a
# engines_run folder is reused with a warning. Idempotent, POSIX sh.
#
# Usage: sh tools/fetch-engines.sh [folder]     (default: .engines beside tools/)
# Environment: ENGINES_DEBIAN_MIRROR (http://deb.debian.org/debian).
set -eu

project=$(cd "$(dirname "$0")/.." && pwd)
target=${1:-$project/.engines}
mirror=${ENGINES_DEBIAN_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
roots="redis-server redis-tools valkey-server valkey-tools"

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

engines_run() {
    for binary in redis/bin/redis-server redis/bin/redis-cli valkey/bin/valkey-server valkey/bin/valkey-cli; do
        "$target/$binary" --version >/dev/null 2>&1 || return 1
    done
}

if ! apt_private apt-get update >"$apt_dir/update.log" 2>&1; then
    if engines_run; then
        echo "fetch-engines: the Debian archive is out of reach; reusing $target as it is:" >&2
        cat "$target/packages.txt" >&2
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

if [ -f "$target/packages.txt" ] && [ "$(cat "$target/packages.txt")" = "$(printf "%s" "$wanted")" ] && engines_run; then
    echo "fetch-engines: $target is current:"
    cat "$target/packages.txt"
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

work="$target/unpack.new"
rm -rf "$work"
mkdir -p "$work/debs" "$work/root"
echo "fetch-engines: downloading$closure"
# shellcheck disable=SC2086
(cd "$work/debs" && apt_private apt-get download $closure >/dev/null)
for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$work/root"
done

loader="$target/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
libraries="$target/root/usr/lib/x86_64-linux-gnu:$target/root/lib/x86_64-linux-gnu"
for engine in redis valkey; do
    mkdir -p "$work/$engine/bin"
    for binary in "$engine-server" "$engine-cli"; do
        # The loader is the unpacked glibc's own; argv[0] stays the binary's path, so the
        # process is still recognisable as $binary (and a server still knows it is one).
        cat >"$work/$engine/bin/$binary" <<EOF
#!/bin/sh
# Written by tools/fetch-engines.sh: Debian unstable's $binary through its own loader.
exec "$loader" --library-path "$libraries" "$target/root/usr/bin/$binary" "\$@"
EOF
        chmod 0755 "$work/$engine/bin/$binary"
    done
done

# Swap the new folder in whole, so that an interrupted run never leaves half of one.
rm -rf "$target/root" "$target/redis" "$target/valkey" "$target/packages.txt"
mv "$work/root" "$target/root"
mv "$work/redis" "$target/redis"
mv "$work/valkey" "$target/valkey"
rm -rf "$work"
printf "%s" "$wanted" >"$target/packages.txt"
engines_run || {
    echo "fetch-engines: the unpacked binaries do not run" >&2
    exit 1
}
for binary in redis/bin/redis-server valkey/bin/valkey-server; do
    "$target/$binary" --version
done
