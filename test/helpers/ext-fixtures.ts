/**
 * Building disks with ext filesystems the way a guest would leave them: garbage in free space,
 * files deleted with debugfs so their old data lies in free blocks. And reading them back with
 * e2fsprogs as the oracle: e2fsck, dumpe2fs free-block lists, debugfs dumps of every file.
 */
import { mkdirSync, rmSync, readdirSync, readFileSync, openSync, readSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { run, runStatus, garbageFile, sha256 } from './fixtures.js';
import { Extents } from '../../src/io/extents.js';

export interface ExtSpec {
  type: 'ext2' | 'ext3' | 'ext4';
  sizeMiB: number;
  /** Extra mke2fs arguments, e.g. ['-b', '1024'] or ['-O', 'bigalloc']. */
  mkfsArgs?: string[];
  /** Files to create: path -> content. */
  files: Record<string, Buffer>;
  /** Paths to delete afterwards with debugfs (their blocks become free, data stays). */
  remove?: string[];
}

/** Make an ext filesystem image file on garbage, populated, with some files deleted. */
export function makeExtImage(path: string, spec: ExtSpec, workDir: string, garbage = true): void {
  const root = join(workDir, `root-${Math.random().toString(36).slice(2)}`);
  mkdirSync(root, { recursive: true });
  for (const [p, data] of Object.entries(spec.files)) {
    const full = join(root, p);
    mkdirSync(join(full, '..'), { recursive: true });
    writeFileSyncSafe(full, data);
  }
  if (garbage) garbageFile(path, spec.sizeMiB << 20);
  else closeSync(openSync(path, 'w'));
  run('mke2fs', ['-q', '-F', '-t', spec.type, '-E', 'nodiscard', ...(spec.mkfsArgs ?? []), '-d', root, path, `${spec.sizeMiB}M`]);
  for (const p of spec.remove ?? []) run('debugfs', ['-w', '-R', `rm /${p}`, path]);
}

function writeFileSyncSafe(path: string, data: Buffer): void {
  const fd = openSync(path, 'w');
  writeSync(fd, data);
  closeSync(fd);
}

/** Extract [offset, offset+length) of `disk` into a new file. */
export function extract(disk: string, offset: number, length: number, out: string): void {
  const buf = Buffer.allocUnsafe(4 << 20);
  const sfd = openSync(disk, 'r');
  const dfd = openSync(out, 'w');
  try {
    for (let off = 0; off < length; off += buf.length) {
      const n = readSync(sfd, buf, 0, Math.min(buf.length, length - off), offset + off);
      writeSync(dfd, buf, 0, n, off);
    }
  } finally {
    closeSync(sfd);
    closeSync(dfd);
  }
}

/** e2fsck -fn: returns its exit status (0 = clean) and output. */
export function e2fsck(img: string): { status: number; output: string } {
  const r = runStatus('e2fsck', ['-fn', img]);
  return { status: r.status, output: r.stdout + r.stderr };
}

/** sha256 of every regular file in the filesystem, read back by debugfs (rdump). */
export function extFileSums(img: string, workDir: string): Map<string, string> {
  const out = join(workDir, `dump-${Math.random().toString(36).slice(2)}`);
  mkdirSync(out, { recursive: true });
  try {
    run('debugfs', ['-R', `rdump / ${out}`, img]);
    return treeSums(out);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

/** sha256 of every regular file under a folder, by relative path. */
export function treeSums(dir: string): Map<string, string> {
  const sums = new Map<string, string>();
  const walk = (d: string, rel: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.name === 'lost+found') continue;
      const p = join(d, e.name);
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(p, r);
      else if (e.isFile()) sums.set(r, sha256(readFileSync(p)));
    }
  };
  walk(dir, '');
  return sums;
}

/** Free block ranges [start, end) in bytes, as dumpe2fs lists them ("Free blocks: a-b, c"). */
export function dumpe2fsFree(img: string): { blockSize: number; ranges: Array<[number, number]> } {
  const text = run('dumpe2fs', [img]);
  const bs = Number(/Block size:\s+(\d+)/.exec(text)![1]);
  // With bigalloc, dumpe2fs prints each free range's last cluster by its first block.
  const cluster = Number(/Cluster size:\s+(\d+)/.exec(text)?.[1] ?? bs);
  const ranges: Array<[number, number]> = [];
  for (const m of text.matchAll(/^\s+Free blocks: (.*)$/gm)) {
    for (const part of m[1]!.split(',').map((s) => s.trim()).filter(Boolean)) {
      const [a, b] = part.split('-').map(Number);
      ranges.push([a! * bs, Math.ceil((((b ?? a)! + 1) * bs) / cluster) * cluster]);
    }
  }
  return { blockSize: bs, ranges };
}

/**
 * Unused inode-table blocks [start, end) in bytes, as dumpe2fs reports them: for each group, the
 * blocks of "Inode table at A-B" past those holding its inodes that are not "unused inodes"; with
 * bigalloc, only the whole clusters among them. Empty without group checksums (dumpe2fs then
 * prints no unused counts).
 */
export function dumpe2fsUnusedItables(img: string): Array<[number, number]> {
  const text = run('dumpe2fs', [img]);
  const bs = Number(/Block size:\s+(\d+)/.exec(text)![1]);
  const ipg = Number(/Inodes per group:\s+(\d+)/.exec(text)![1]);
  const isz = Number(/Inode size:\s+(\d+)/.exec(text)![1]);
  const out: Array<[number, number]> = [];
  for (const g of text.split(/^Group \d+:/m).slice(1)) {
    const table = /Inode table at (\d+)-(\d+)/.exec(g);
    const unused = /(\d+) unused inodes/.exec(g);
    if (!table || !unused) continue;
    const first = Number(table[1]) + Math.ceil(((ipg - Number(unused[1])) * isz) / bs);
    const end = Number(table[2]) + 1;
    if (first < end) out.push([first * bs, end * bs]);
  }
  const cluster = Number(/Cluster size:\s+(\d+)/.exec(text)?.[1] ?? bs);
  return [...new Extents(out.map(([start, end]) => ({ start, end }))).alignInward(cluster)].map((r) => [r.start, r.end]);
}
