#!/bin/bash
# The full check of a sparsified encrypted disk, by libguestfs (its appliance has dm-crypt): open
# the LUKS volume with the key, activate LVM inside if any, fsck the ext4 filesystem and list the
# sha256 of every file. Run it on the input and on the output and compare the two listings.
#
#   bench/luks-guestfish-check.sh IMAGE LUKS_DEVICE FS_DEVICE KEY_FILE
#     LUKS_DEVICE  the encrypted device as libguestfs names it: /dev/sda1, /dev/VG/LV
#     FS_DEVICE    the ext4 inside once opened: /dev/mapper/crypt, or /dev/VG/LV for LVM on LUKS
#
# Prints "fsck: N" (0 = clean) and then "sha256  /path" lines. Slow: the appliance boots under TCG.
set -euo pipefail
img=$1 luks=$2 fs=$3 keyfile=$4
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}
lvm=()
case "$fs" in /dev/mapper/crypt) ;; *) lvm=(: vgscan : vg-activate-all true) ;; esac
head -n1 "$keyfile" | guestfish --ro --format=raw -a "$img" --keys-from-stdin -- \
  run : cryptsetup-open "$luks" crypt "${lvm[@]}" : \
  echo fsck-status : fsck ext4 "$fs" : mount-ro "$fs" / : checksums-out sha256 / - \
  | awk '$0 == "fsck-status" { getline; print "fsck: " $0; next } { print }' | sort -k2
