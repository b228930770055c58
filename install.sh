#!/usr/bin/env sh
# Installs kiln into PREFIX (default: ~/.local): PREFIX/bin/kiln, and PREFIX/lib/libkiln_capi.a,
# the C runtime `kiln compile --emit so` links model libraries with (found from bin/../lib).
#
#     ./install.sh [PREFIX]
set -eu
prefix="${1:-$HOME/.local}"
case "$prefix" in
/*) ;;
*) prefix="$PWD/$prefix" ;;
esac
cd "$(dirname "$0")"
cargo build --release -p kiln -p kiln-capi
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$prefix/bin" "$prefix/lib"
# Copied beside, then renamed: replacing a kiln that is running is fine.
cp "$target/release/kiln" "$prefix/bin/.kiln.new"
mv -f "$prefix/bin/.kiln.new" "$prefix/bin/kiln"
cp "$target/release/libkiln_capi.a" "$prefix/lib/.libkiln_capi.a.new"
mv -f "$prefix/lib/.libkiln_capi.a.new" "$prefix/lib/libkiln_capi.a"
echo "installed $prefix/bin/kiln and $prefix/lib/libkiln_capi.a"
