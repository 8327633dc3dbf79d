/**
 * Shared by the in-place tests: GPT disks with ext filesystems built by the real tools on garbage
 * (files deleted so their data lies in free blocks), and the oracle: qemu-img check, e2fsck -fn on
 * every partition, and every file's checksum read back by debugfs.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, runStatus, garbageFile, fileContent } from '../helpers/fixtures.js';
import { makeExtImage, extract, e2fsck, extFileSums } from '../helpers/ext-fixtures.js';
import { placeAt } from '../helpers/disk-builder.js';

/** Until the lead registers them: the formats in-place mode handles. */
export interface Part {
  offset: number;
  size: number;
  sums: Map<string, string>;
}

export interface GptDisk {
  path: string;
  parts: Part[];
}

/**
 * A raw GPT disk of `sizeMiB` on garbage: partition 1 ext4, partition 2 ext2, each with files
 * kept and files deleted (their data stays in free blocks).
 */
export function makeGptDisk(dir: string, name = 'disk.img', sizeMiB = 64): GptDisk {
  const path = join(dir, name);
  garbageFile(path, sizeMiB << 20);
  const p1MiB = Math.floor((sizeMiB - 2) * 0.65);
  run('sgdisk', ['-n', `1:2048:+${p1MiB}M`, '-t', '1:8300', '-n', '2:0:0', '-t', '2:8300', path]);
  const info = (n: number) => {
    const t = run('sgdisk', ['-i', String(n), path]);
    const first = Number(/First sector: (\d+)/.exec(t)![1]);
    const last = Number(/Last sector: (\d+)/.exec(t)![1]);
    return { offset: first * 512, size: (last - first + 1) * 512 };
  };
  const specs: Array<{ type: 'ext4' | 'ext2'; seed: string }> = [
    { type: 'ext4', seed: 'p1' },
    { type: 'ext2', seed: 'p2' },
  ];
  const parts: Part[] = [];
  specs.forEach((spec, i) => {
    const { offset, size } = info(i + 1);
    const img = join(dir, `${name}.p${i + 1}`);
    const sizeM = Math.floor(size / (1 << 20));
    const big = Math.max(1, Math.floor(sizeM / 4));
    makeExtImage(
      img,
      {
        type: spec.type,
        sizeMiB: sizeM,
        files: {
          'keep/a.bin': fileContent(`${spec.seed}a`, big << 20),
          'keep/b.txt': Buffer.from(`hello ${spec.seed}\n`),
          'keep/c.bin': fileContent(`${spec.seed}c`, 300 * 1024 + 17),
          'gone1.bin': fileContent(`${spec.seed}g1`, big << 20),
          'gone2.bin': fileContent(`${spec.seed}g2`, (big << 20) + 4096 * 7),
        },
        remove: ['gone1.bin', 'gone2.bin'],
      },
      dir,
    );
    placeAt(path, img, offset);
    parts.push({ offset, size, sums: extFileSums(img, dir) });
  });
  return { path, parts };
}

/** Check every partition of a raw disk with e2fsck and compare file checksums; returns problems. */
export function checkRawDisk(rawPath: string, parts: Part[], dir: string): string[] {
  const problems: string[] = [];
  parts.forEach((p, i) => {
    const img = join(dir, `check-${i}-${Math.random().toString(36).slice(2)}.img`);
    extract(rawPath, p.offset, p.size, img);
    const f = e2fsck(img);
    if (f.status !== 0) problems.push(`partition ${i + 1}: e2fsck ${f.status}: ${f.output.slice(0, 400)}`);
    const sums = extFileSums(img, dir);
    for (const [k, v] of p.sums) if (sums.get(k) !== v) problems.push(`partition ${i + 1}: ${k} changed`);
    run('rm', ['-f', img]);
  });
  return problems;
}

/** qemu-img check: exit 0 clean, 3 leaks only, 2 corruption. */
export function qemuCheck(path: string): { status: number; output: string } {
  const r = runStatus('qemu-img', ['check', path]);
  return { status: r.status, output: r.stdout + r.stderr };
}

/** Check a disk image of any format: converted to raw by qemu-img, then e2fsck and checksums. */
export function checkImage(path: string, format: string, parts: Part[], dir: string): string[] {
  if (format === 'raw') return checkRawDisk(path, parts, dir);
  const raw = join(dir, `conv-${Math.random().toString(36).slice(2)}.raw`);
  run('qemu-img', ['convert', '-f', format, '-O', 'raw', path, raw]);
  try {
    return checkRawDisk(raw, parts, dir);
  } finally {
    run('rm', ['-f', raw]);
  }
}

/** Allocated host bytes of a file (du). */
export { allocatedBytes as du } from '../helpers/fixtures.js';

/** How to start the CLI as a child process: the entry next to this file, through tsx when running from source. */
export function cliCommand(): { cmd: string; args: string[] } {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.ts')) return { cmd: process.execPath, args: ['--import', 'tsx', join(here, '..', 'cli-entry.ts')] };
  return { cmd: process.execPath, args: [join(here, '..', 'cli-entry.js')] };
}
