#!/usr/bin/env bash
# Builds a release tarball: the three binaries, their man pages and shell completions
# (generated from the command line's definition), and the deployment files.
#
#   deploy/release.sh [--bin DIR] [--out DIR]
#
# --bin DIR packs binaries already built there (default: `cargo build --release` first, then
# target/release); --out DIR is where the tarball and its .sha256 go (default: target/dist).
# Prints the tarball's path last. Unpack it anywhere (or under /usr/local) and put its bin/
# on the PATH:
#   tar xzf lifeboat-VERSION-linux-ARCH.tar.gz
#   sha256sum -c lifeboat-VERSION-linux-ARCH.tar.gz.sha256
set -euo pipefail
cd "$(dirname "$0")/.."
bin=""
out="target/dist"
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "release.sh: unknown argument $1 (use --bin DIR, --out DIR)" >&2; exit 1 ;;
    esac
done
if [ -z "$bin" ]; then
    cargo build --release --locked --bins
    bin="target/release"
fi
for b in lifeboat lifeboat-controller lifeboat-agent; do
    if [ ! -x "$bin/$b" ]; then
        echo "release.sh: $bin/$b is missing: build it first (cargo build --release --bins)" >&2
        exit 1
    fi
done
version="$("$bin/lifeboat" --version | awk '{print $2}')"
name="lifeboat-$version-linux-$(uname -m)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/$name"
mkdir -p "$root/bin" "$root/share/man/man1" "$root/share/bash-completion/completions" \
    "$root/share/zsh/site-functions" "$root/share/fish/vendor_completions.d" "$root/deploy"
for b in lifeboat lifeboat-controller lifeboat-agent; do
    cp "$bin/$b" "$root/bin/"
    strip --strip-debug "$root/bin/$b"
done
for b in lifeboat lifeboat-controller lifeboat-agent; do
    "$root/bin/$b" man --out "$root/share/man/man1" >/dev/null
    "$root/bin/$b" completions bash > "$root/share/bash-completion/completions/$b"
    "$root/bin/$b" completions zsh > "$root/share/zsh/site-functions/_$b"
    "$root/bin/$b" completions fish > "$root/share/fish/vendor_completions.d/$b.fish"
done
cp -r deploy/systemd deploy/prometheus deploy/grafana deploy/kubernetes deploy/README.md "$root/deploy/"
cp README.md SECURITY.md "$root/"
mkdir -p "$out"
tarball="$(cd "$out" && pwd)/$name.tar.gz"
tar -C "$work" --owner=0 --group=0 -czf "$tarball" "$name"
(cd "$(dirname "$tarball")" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
echo "$tarball"
