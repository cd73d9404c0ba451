#!/usr/bin/env bash
# Runs the README's test command on Debian 13 "trixie" — LibTorch 2.6 (CPU), oneDNN 3.7, g++ 14,
# CMake 3.31 — in a chroot on this machine, for the committed HEAD of this checkout: a check that
# xmoe still builds and passes against LibTorch 2.x (docs/gpu.md). Needs root (debootstrap, mount,
# chroot) and the Debian mirror; about 11 minutes on 2 cores, ~3 GB of disk.
#   scripts/debian13_check.sh [ROOT]     (ROOT: the chroot, default /tmp/xmoe-debian13; reused)
set -euo pipefail
root=${1:-/tmp/xmoe-debian13}
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
if [ "$(id -u)" -ne 0 ]; then
  echo "debian13_check.sh: needs root (debootstrap, mount and chroot)" >&2
  exit 2
fi
if ! command -v debootstrap >/dev/null; then
  apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi
if [ ! -x "$root/usr/bin/apt-get" ]; then
  echo "debian13_check.sh: creating the Debian 13 chroot in $root"
  debootstrap --variant=minbase trixie "$root" http://deb.debian.org/debian >/dev/null
fi

unmount_all() {
  for m in sys dev/pts dev proc; do
    if mountpoint -q "$root/$m"; then umount "$root/$m"; fi
  done
}
trap unmount_all EXIT
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"
mountpoint -q "$root/dev/pts" || mount --bind /dev/pts "$root/dev/pts"
mountpoint -q "$root/sys" || mount -t sysfs sys "$root/sys"
cp /etc/resolv.conf "$root/etc/resolv.conf"

rm -rf "$root/work/xmoe"
mkdir -p "$root/work"
git clone -q "$repo" "$root/work/xmoe"
echo "debian13_check.sh: testing $(git -C "$repo" rev-parse --short HEAD) on Debian 13"
chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CI=true \
  bash -c 'cd /work/xmoe && dpkg-query -W libtorch-dev libdnnl-dev g++ 2>/dev/null; bash scripts/test.sh'
