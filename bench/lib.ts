/** Benchmark helpers: timing child processes with their peak RSS, medians, and image generation. */
import { spawnSync, execFileSync } from 'node:child_process';
import { readFileSync, rmSync, openSync, writeSync, closeSync, mkdirSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';
import { fileURLToPath } from 'node:url';

export const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..');
export const CLI = join(ROOT, 'bin', 'sparsify.js');

export interface Timed {
  seconds: number;
  peakRssBytes: number;
}

/** Run a command under /usr/bin/time; returns wall seconds and peak RSS. Throws on failure. */
export function timed(cmd: string, args: string[], workDir: string): Timed {
  const out = join(workDir, '.time');
  const r = spawnSync('/usr/bin/time', ['-f', '%e %M', '-o', out, cmd, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  const [secs, kib] = readFileSync(out, 'utf8').trim().split(/\s+/).slice(-2).map(Number);
  return { seconds: secs!, peakRssBytes: kib! * 1024 };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: 'utf8', input, maxBuffer: 64 << 20 });
}

export function dropFile(path: string): void {
  rmSync(path, { force: true });
}

/** Fill a file with non-zero garbage quickly: one random MiB, varied per MiB so nothing dedups. */
export function garbage(path: string, size: number): void {
  const fd = openSync(path, 'w');
  const chunk = Buffer.allocUnsafe(1 << 20);
  randomFillSync(chunk);
  try {
    for (let off = 0, i = 0; off < size; off += chunk.length, i++) {
      chunk.writeUInt32LE(i, 0);
      writeSync(fd, chunk, 0, Math.min(chunk.length, size - off), off);
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * An ext4 disk image of `sizeGiB` with about `usedGiB` of files (incompressible-ish content)
 * and garbage in all free space: what a long-lived guest disk looks like.
 */
export function makeExtDisk(path: string, workDir: string, sizeGiB: number, usedGiB: number): void {
  const files = join(workDir, 'files');
  rmSync(files, { recursive: true, force: true });
  mkdirSync(files, { recursive: true });
  const fileSize = 64 << 20;
  const buf = Buffer.allocUnsafe(fileSize);
  randomFillSync(buf);
  const n = Math.round((usedGiB * 1024) / 64);
  for (let i = 0; i < n; i++) {
    for (let off = 0; off < fileSize; off += 1 << 20) buf.writeUInt32LE(i * 64 + off / (1 << 20), off);
    const fd = openSync(join(files, `f${i}.bin`), 'w');
    writeSync(fd, buf);
    closeSync(fd);
  }
  garbage(path, sizeGiB * 2 ** 30);
  sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'nodiscard', '-d', files, path]);
  rmSync(files, { recursive: true, force: true });
}

/** A sparse ext4 image of huge virtual size with `usedGiB` of data (lazy init keeps it sparse). */
export function makeHugeSparseDisk(path: string, workDir: string, sizeTiB: number, usedGiB: number): void {
  const files = join(workDir, 'hugefiles');
  rmSync(files, { recursive: true, force: true });
  mkdirSync(files, { recursive: true });
  const buf = Buffer.allocUnsafe(64 << 20);
  randomFillSync(buf);
  for (let i = 0; i < Math.round((usedGiB * 1024) / 64); i++) {
    const fd = openSync(join(files, `f${i}.bin`), 'w');
    buf.writeUInt32LE(i, 0);
    writeSync(fd, buf);
    closeSync(fd);
  }
  const fd = openSync(path, 'w');
  ftruncateSync(fd, 0);
  closeSync(fd);
  sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'lazy_itable_init=1,lazy_journal_init=1', '-d', files, path, `${sizeTiB}T`]);
  rmSync(files, { recursive: true, force: true });
}
