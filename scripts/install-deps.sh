#!/usr/bin/env bash
# Installs the Debian packages sparsify's tests use as oracles (mkfs/fsck of each filesystem, mkfs
# of filesystems it cannot read, to check they are named as blkid names them and kept whole,
# partitioning tools, qemu-img, LVM and cryptsetup tools, chromium for the UI test, PostgreSQL for
# the cluster tests, which start private servers of their own, libvirt and QEMU for the VM tests,
# which start libvirtd when it is not running, a C++ toolchain for the native addons npm builds
# from source, and for the packaging tests systemd (systemd-analyze verify of the unit; it installs
# where systemd is not PID 1) and man-db (man -l of the pages), and debootstrap for the live-trim
# test's Debian guest (built from Debian's mirror once per run)) when any is missing. Needs root.
set -euo pipefail
PACKAGES=(e2fsprogs xfsprogs btrfs-progs ntfs-3g dosfstools exfatprogs mtools qemu-utils gdisk fdisk
          util-linux lvm2 cryptsetup-bin time chromium make g++ postgresql
          jfsutils reiserfsprogs f2fs-tools nilfs-tools udftools squashfs-tools genisoimage erofs-utils makefs
          libvirt-daemon-system libvirt-clients qemu-system-x86 systemd man-db
          nbdkit libnbd-bin gnutls-bin
          debootstrap)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
