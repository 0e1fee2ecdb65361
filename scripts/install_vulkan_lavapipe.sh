#!/usr/bin/env bash
# Install Mesa 25's lavapipe (CPU Vulkan) into the project folder .vulkan/ without
# touching the system GL stack, so that ManiSkill3/SAPIEN can render on a machine
# without a GPU.
#
# Why: Debian 12's own lavapipe (Mesa 22.3.6) lacks descriptorBindingPartiallyBound
# and every SAPIEN render path fails ("failed to find a rendering device",
# "ErrorFeatureNotPresent"). bookworm-backports ships Mesa 25.
#
# How: a private apt sources list holding only bookworm-backports main, with its own
# state and cache directories; `apt-get download mesa-vulkan-drivers`; `dpkg -x` into
# .vulkan/; a copy of lvp_icd.json whose library_path points at the extracted
# libvulkan_lvp.so. Nothing is installed system-wide except the Vulkan loader
# (libvulkan1) when it is missing.
#
# Idempotent: a second run with the files in place only re-checks them.
# Usage: scripts/install_vulkan_lavapipe.sh [TARGET_DIR]   (default: <repo>/.vulkan)
# Last line printed: VK_ICD_FILENAMES=<absolute path to the icd json>
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian),
#              DEBIAN_SUITE (default bookworm-backports).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$(realpath -m "${1:-$repo_root/.vulkan}")"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="${DEBIAN_SUITE:-bookworm-backports}"
icd_json="$target/lvp_icd.json"

die() { echo "install_vulkan_lavapipe: error: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root to run '$*' (run this script as root or install sudo)"; fi
}

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian 12 (bookworm) only"
command -v dpkg >/dev/null 2>&1 || die "dpkg not found: this script supports Debian 12 (bookworm) only"

# 1. The Vulkan loader is the one system package needed (it is not part of the GL stack).
if ! ldconfig -p | grep -q 'libvulkan\.so\.1 '; then
    echo "installing the Vulkan loader (libvulkan1) ..."
    if ! as_root apt-get install -y --no-install-recommends libvulkan1 >/dev/null 2>&1; then
        as_root apt-get update >/dev/null
        as_root apt-get install -y --no-install-recommends libvulkan1 >/dev/null \
            || die "apt-get install libvulkan1 failed; install it by hand and rerun"
    fi
fi

lvp_so() { find "$target/usr/lib" -name libvulkan_lvp.so -print -quit 2>/dev/null || true; }

# 2. Download and extract mesa-vulkan-drivers from backports (skipped when present).
if [ -z "$(lvp_so)" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial" "$work/deb"
    echo "deb $mirror $suite main" > "$work/sources.list"
    apt_opts=(
        -o "Dir::Etc::sourcelist=$work/sources.list"
        -o "Dir::Etc::sourceparts=-"
        -o "Dir::State=$work/state"
        -o "Dir::State::status=$work/state/status"
        -o "Dir::Cache=$work/cache"
        -o "APT::Sandbox::User=root"
        -o "Debug::NoLocking=1"
    )
    touch "$work/state/status"
    echo "fetching the $suite package list from $mirror ..."
    apt-get "${apt_opts[@]}" update >/dev/null \
        || die "apt-get update of $suite from $mirror failed (network? set DEBIAN_MIRROR)"
    (cd "$work/deb" && apt-get "${apt_opts[@]}" download mesa-vulkan-drivers >/dev/null) \
        || die "apt-get download mesa-vulkan-drivers from $suite failed"
    deb="$(find "$work/deb" -name 'mesa-vulkan-drivers_*.deb' -print -quit)"
    [ -n "$deb" ] || die "apt-get download left no mesa-vulkan-drivers .deb in $work/deb"
    tmp_target="$target.tmp.$$"
    rm -rf "$tmp_target"
    mkdir -p "$tmp_target"
    dpkg -x "$deb" "$tmp_target"
    basename "$deb" > "$tmp_target/PACKAGE"
    rm -rf "$target"
    mv "$tmp_target" "$target"
fi

so="$(lvp_so)"
[ -n "$so" ] || die "no libvulkan_lvp.so under $target/usr/lib; delete $target and rerun"

# 3. The extracted driver must find its shared libraries on this system.
missing="$(ldd "$so" | awk '/not found/ {print $1}' | tr '\n' ' ')"
if [ -n "$missing" ]; then
    die "libvulkan_lvp.so needs libraries that are not installed: $missing
install the Debian packages that provide them (e.g. 'apt-get install libllvm15') and rerun"
fi

# 4. Our own ICD json with an absolute library_path (written to a temp name, then renamed).
src_json="$(find "$target/usr/share/vulkan/icd.d" -name 'lvp_icd*.json' -print -quit)"
[ -n "$src_json" ] || die "no lvp_icd json in $target/usr/share/vulkan/icd.d; delete $target and rerun"
sed -E "s#\"library_path\"[[:space:]]*:[[:space:]]*\"[^\"]*\"#\"library_path\": \"$so\"#" \
    "$src_json" > "$icd_json.tmp"
grep -q "\"library_path\": \"$so\"" "$icd_json.tmp" \
    || die "could not rewrite library_path in $src_json"
mv "$icd_json.tmp" "$icd_json"

echo "lavapipe ready: $(cat "$target/PACKAGE" 2>/dev/null || echo mesa-vulkan-drivers) in $target"
echo "VK_ICD_FILENAMES=$icd_json"
