#!/usr/bin/env bash
# Rebuilds examples/demo-disk.img.gz: a 64 MiB GPT disk with an ext2 /boot and an ext4 root,
# files deleted with debugfs so their old data lies in free space, and stale text everywhere else
# (text, not random bytes, so the committed file compresses well).
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)/demo-disk.img.gz"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p boot root/etc root/home/alice
head -c 300K /dev/urandom > boot/vmlinuz
echo "root=/dev/sda2" > boot/cmdline
printf 'demo\n' > root/etc/hostname
head -c 200K /dev/urandom > root/home/alice/photo.jpg
yes "the quick brown fox jumps over the lazy dog" | head -c 20M > root/home/alice/old-backup.tar || true
yes "kernel build leftovers" | head -c 6M > boot/old-initrd.img || true
yes "garbage left in free space by the guest " | head -c 64M > demo.img || true
sgdisk -o -n1:2048:+16M -c1:boot -n2:0:0 -c2:root demo.img >/dev/null
yes "stale" | head -c 16M > p1.img || true
mke2fs -q -F -t ext2 -E nodiscard -d boot p1.img 16M
debugfs -w -R "rm /old-initrd.img" p1.img
yes "stale" | head -c 46M > p2.img || true
mke2fs -q -F -t ext4 -E nodiscard -d root p2.img 46M
debugfs -w -R "rm /home/alice/old-backup.tar" p2.img
dd if=p1.img of=demo.img bs=1M seek=1 conv=notrunc status=none
dd if=p2.img of=demo.img bs=1M seek=17 conv=notrunc status=none
gzip -9 -c demo.img > "$out"
echo "wrote $out"
