/**
 * Whole test disks: a partition table made by sgdisk/sfdisk on a garbage-filled (or sparse zero)
 * file, with ext filesystems built separately by mke2fs and placed into their partitions.
 */
import { join } from 'node:path';
import { openSync, closeSync, ftruncateSync, readSync, writeSync, statSync } from 'node:fs';
import { run, garbageFile } from './fixtures.js';
import { makeExtImage, type ExtSpec } from './ext-fixtures.js';

export interface PartSpec {
  sizeMiB: number;
  /** An ext filesystem to build in it; absent: leave the partition's garbage as it is. */
  ext?: Omit<ExtSpec, 'sizeMiB'>;
}

export interface BuiltPartition {
  device: string;
  offset: number;
  size: number;
  spec: PartSpec;
}

/**
 * Build a disk. `garbage` fills the disk (and each filesystem's free space) with junk first;
 * otherwise the disk starts as a sparse file of zeros, as upstream's tests do.
 */
export function buildDisk(
  path: string,
  opts: { sizeMiB: number; label: 'gpt' | 'dos'; parts: PartSpec[]; garbage: boolean; workDir: string },
): BuiltPartition[] {
  if (opts.garbage) garbageFile(path, opts.sizeMiB << 20);
  else {
    const fd = openSync(path, 'w');
    ftruncateSync(fd, opts.sizeMiB << 20);
    closeSync(fd);
  }
  const out: BuiltPartition[] = [];
  let start = 1 << 20;
  opts.parts.forEach((p, i) => {
    out.push({ device: `/dev/sda${i + 1}`, offset: start, size: p.sizeMiB << 20, spec: p });
    start += p.sizeMiB << 20;
  });
  if (opts.label === 'gpt') {
    run('sgdisk', ['-o', ...out.map((p, i) => `-n${i + 1}:${p.offset / 512}:${(p.offset + p.size) / 512 - 1}`), path]);
  } else {
    const script = 'label: dos\n' + out.map((p) => `start=${p.offset / 512}, size=${p.size / 512}, type=83\n`).join('');
    run('sfdisk', ['-q', path], { input: script });
  }
  out.forEach((p, i) => {
    if (!p.spec.ext) return;
    const fsImg = join(opts.workDir, `part${i + 1}.img`);
    makeExtImage(fsImg, { ...p.spec.ext, sizeMiB: p.spec.sizeMiB }, opts.workDir, opts.garbage);
    placeAt(path, fsImg, p.offset, !opts.garbage);
  });
  return out;
}

const ZERO = Buffer.alloc(4 << 20);

/** Copy `src` into `disk` at `offset`; with `sparse`, zero chunks are skipped (the disk is zero there). */
export function placeAt(disk: string, src: string, offset: number, sparse = false): void {
  const size = statSync(src).size;
  const buf = Buffer.allocUnsafe(4 << 20);
  const sfd = openSync(src, 'r');
  const dfd = openSync(disk, 'r+');
  try {
    for (let off = 0; off < size; off += buf.length) {
      const n = readSync(sfd, buf, 0, Math.min(buf.length, size - off), off);
      if (sparse && buf.subarray(0, n).equals(ZERO.subarray(0, n))) continue;
      writeSync(dfd, buf, 0, n, offset + off);
    }
  } finally {
    closeSync(sfd);
    closeSync(dfd);
  }
}
