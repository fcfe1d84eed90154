#!/usr/bin/env bash
# Builds the lifeboat-controller and lifeboat-agent images without any registry: each is
# FROM scratch with the release binaries and exactly the shared libraries they load
# (collected with ldd), so nothing is pulled and nothing else is inside.
#
#   deploy/docker/build.sh [TAG]        # default TAG: the workspace version
set -euo pipefail
cd "$(dirname "$0")/../.."
tag="${1:-$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')}"
cargo build --release --locked --bins
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# rootfs DIR BINARY...: the binaries in /usr/local/bin, their libraries at their paths.
rootfs() {
    local root="$1"; shift
    mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc"
    chmod 1777 "$root/tmp"
    echo "lifeboat:x:0:0::/:/usr/local/bin/lifeboat" > "$root/etc/passwd"
    for bin in "$@"; do
        cp "target/release/$bin" "$root/usr/local/bin/"
        strip --strip-debug "$root/usr/local/bin/$bin"
        ldd "target/release/$bin" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
    done
}

rootfs "$work/controller" lifeboat-controller lifeboat
cp deploy/docker/Dockerfile.controller "$work/controller/Dockerfile"
docker build -q -t "lifeboat-controller:$tag" -t lifeboat-controller:latest "$work/controller"

rootfs "$work/agent" lifeboat-agent
cp deploy/docker/Dockerfile.agent "$work/agent/Dockerfile"
docker build -q -t "lifeboat-agent:$tag" -t lifeboat-agent:latest "$work/agent"

echo "built lifeboat-controller:$tag and lifeboat-agent:$tag"
