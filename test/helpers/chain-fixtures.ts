/**
 * qcow2 backing chains as a guest leaves them after a snapshot: a base disk (GPT, ext4 + ext2 on
 * garbage, files deleted in it) and a leaf whose changes were all made "through the overlay":
 * a new file written and deleted (the leaf's own free space), files added and removed, and a file
 * of zeros held as qcow2 zero clusters over the base's non-zero data.
 *
 * Without qemu-nbd, the changes are made by debugfs on a raw copy of the guest's view; the leaf is
 * an overlay of that copy rebased onto the base (`qemu-img rebase` in safe mode writes exactly the
 * clusters that differ), and the zero clusters are made by `qemu-io write -z` on the leaf itself.
 *
 * The oracle: e2fsck and every file's checksum (debugfs), dumpe2fs's free blocks for "every used
 * byte reads as before", qemu-img map / check / info for the images.
 */
import { copyFileSync, openSync, readSync, closeSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run, fileContent, readBytes, sha256, patchFile } from './fixtures.js';
import { extract, extFileSums, dumpe2fsFree } from './ext-fixtures.js';
import { placeAt } from './disk-builder.js';
import { makeGptDisk, type Part } from '../inplace/crash-helpers.js';

export interface ChainBase {
  dir: string;
  /** The base image (qcow2 v3) and the raw guest view the leaves are made from. */
  base: string;
  /** The guest's disk as the leaf shows it, raw. */
  modified: string;
  /** Partitions of the modified view with every file's checksum. */
  parts: Part[];
  /** Bytes of the file written and then deleted through the overlay. */
  leafGoneBytes: number;
  /** Disk ranges of /zeros.bin (all zero bytes, in use): zero clusters in the leaf, where whole. */
  zeros: Array<{ start: number; end: number }>;
}

const LEAF_GONE_MIB = 12;

/** Byte ranges (relative to the filesystem) of a file's blocks, from debugfs, contiguous ones merged. */
function fileBlocks(fsImg: string, path: string, blockSize: number): Array<{ start: number; end: number }> {
  const text = run('debugfs', ['-R', `blocks ${path}`, fsImg]);
  const out: Array<{ start: number; end: number }> = [];
  for (const b of text.trim().split(/\s+/).filter(Boolean).map(Number)) {
    const last = out[out.length - 1];
    if (last && last.end === b * blockSize) last.end += blockSize;
    else out.push({ start: b * blockSize, end: (b + 1) * blockSize });
  }
  return out;
}

/** The base disk and the guest's changes, shared by every leaf made from them. */
export function buildChainBase(dir: string): ChainBase {
  const disk = makeGptDisk(dir, 'guest.raw', 64);
  const base = join(dir, 'base.qcow2');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'compat=1.1', disk.path, base]);

  // The guest's changes, on partition 1 (ext4).
  const p1 = disk.parts[0]!;
  const fs = join(dir, 'p1-modified.img');
  extract(disk.path, p1.offset, p1.size, fs);
  const host = (name: string, data: Buffer): string => {
    const p = join(dir, name);
    writeFileSync(p, data);
    return p;
  };
  const gone = host('leaf-gone.bin', fileContent('leaf-gone', LEAF_GONE_MIB << 20));
  const kept = host('leaf-new.bin', fileContent('leaf-new', 700 * 1024 + 3));
  // Written with data (debugfs would leave zero blocks as holes), then zeroed in place below.
  const zeros = host('zeros.bin', fileContent('zeros', 1 << 20));
  const debugfs = (cmd: string): void => void run('debugfs', ['-w', '-R', cmd, fs]);
  debugfs(`write ${gone} leaf-gone.bin`);
  debugfs(`write ${kept} leaf-new.bin`);
  debugfs(`write ${zeros} zeros.bin`);
  debugfs('rm leaf-gone.bin');
  debugfs('rm keep/c.bin');
  const { blockSize } = dumpe2fsFree(fs);
  const zeroBlocks = fileBlocks(fs, '/zeros.bin', blockSize);
  for (const z of zeroBlocks) patchFile(fs, z.start, Buffer.alloc(z.end - z.start));

  const modified = join(dir, 'modified.raw');
  copyFileSync(disk.path, modified);
  placeAt(modified, fs, p1.offset);
  const parts: Part[] = [{ ...p1, sums: extFileSums(fs, dir) }, disk.parts[1]!];
  return {
    dir,
    base,
    modified,
    parts,
    leafGoneBytes: LEAF_GONE_MIB << 20,
    zeros: zeroBlocks.map((z) => ({ start: p1.offset + z.start, end: p1.offset + z.end })),
  };
}

/** A leaf over `base.base` showing `base.modified`, made with `qemu-img create -o OPTIONS`. */
export function buildLeaf(b: ChainBase, name: string, options: string): string {
  const leaf = join(b.dir, name);
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', options, '-b', 'modified.raw', '-F', 'raw', name], { cwd: b.dir });
  run('qemu-img', ['rebase', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', name], { cwd: b.dir });
  // /zeros.bin as zero clusters over the base's garbage (whole clusters; qemu writes zeros at the edges).
  run('qemu-io', ['-f', 'qcow2', ...b.zeros.flatMap((z) => ['-c', `write -z ${z.start} ${z.end - z.start}`]), leaf]);
  return leaf;
}

/** The guest's view of an image, as qemu-img reads it, into `out` (raw). */
export function guestView(image: string, out: string): string {
  run('qemu-img', ['convert', '-O', 'raw', image, out]);
  return out;
}

/** Bytes of `image`'s own layer that are data (qemu-img map, depth 0). */
export function ownDataBytes(image: string): number {
  const map = JSON.parse(run('qemu-img', ['map', '--output=json', image])) as Array<{ depth: number; data: boolean; length: number }>;
  return map.filter((m) => m.depth === 0 && m.data).reduce((t, m) => t + m.length, 0);
}

/** Ranges (disk offsets) that dumpe2fs says are free, for every partition of a raw guest view. */
export function freeRanges(raw: string, parts: Part[], dir: string): Array<{ start: number; end: number }> {
  const out: Array<{ start: number; end: number }> = [];
  parts.forEach((p, i) => {
    const img = join(dir, `free-${i}-${Math.random().toString(36).slice(2)}.img`);
    extract(raw, p.offset, p.size, img);
    for (const [s, e] of dumpe2fsFree(img).ranges) out.push({ start: p.offset + s, end: p.offset + e });
    run('rm', ['-f', img]);
  });
  return out;
}

/**
 * Every 512-byte sector where two raw views differ must lie inside `free` (dumpe2fs's free blocks),
 * or read as zero afterwards: ext4's unused inode-table blocks are not in dumpe2fs's free list but
 * may be given back as zeros; e2fsck and the file checksums judge those. Returns the offending
 * sectors (empty when every used byte reads as before).
 */
export function changedOutside(a: string, b: string, free: Array<{ start: number; end: number }>): number[] {
  const size = statSync(a).size;
  if (statSync(b).size !== size) return [-1];
  const sorted = [...free].sort((x, y) => x.start - y.start);
  const isFree = (s: number): boolean => sorted.some((r) => r.start <= s && s + 512 <= r.end);
  const bad: number[] = [];
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const ba = Buffer.alloc(1 << 20);
  const bb = Buffer.alloc(1 << 20);
  try {
    for (let off = 0; off < size; off += ba.length) {
      const n = readSync(fa, ba, 0, ba.length, off);
      readSync(fb, bb, 0, bb.length, off);
      if (ba.subarray(0, n).equals(bb.subarray(0, n))) continue;
      for (let s = 0; s < n; s += 512) {
        const after = bb.subarray(s, s + 512);
        if (!ba.subarray(s, s + 512).equals(after) && !isFree(off + s) && !after.equals(ZERO_SECTOR)) bad.push(off + s);
        if (bad.length > 20) return bad;
      }
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
  return bad;
}

const ZERO_SECTOR = Buffer.alloc(512);

/** sha256 of a whole file. */
export function fileSha(path: string): string {
  return sha256(readBytes(path, 0, statSync(path).size));
}
