/**
 * Shared helpers for tests that build disk images with real tools (mkfs, debugfs, sgdisk, qemu-img).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, openSync, writeSync, closeSync, ftruncateSync, statSync, readSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash, randomFillSync } from 'node:crypto';
import { BlockFile } from '../../src/io/file.js';
import { RawImage } from '../../src/formats/raw.js';
import { Volume } from '../../src/layout/volume.js';

/** A fresh temporary folder, removed by the returned cleanup. */
export function tempDir(prefix = 'sparsify-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Run a tool; throws with its stderr on failure. Returns stdout. */
export function run(cmd: string, args: string[], opts: { input?: string | Buffer; cwd?: string } = {}): string {
  try {
    return execFileSync(cmd, args, { input: opts.input, cwd: opts.cwd, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], maxBuffer: 256 << 20 });
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; status?: number };
    throw new Error(`${cmd} ${args.join(' ')} failed (${err.status}): ${err.stderr ?? ''}${err.stdout ?? ''}`);
  }
}

/** Run a tool and return its exit status and output without throwing. */
export function runStatus(cmd: string, args: string[], input?: string): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { input, encoding: 'utf8', maxBuffer: 256 << 20 });
  return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** True when a command exists on PATH (or /usr/sbin, /sbin). */
export function haveTool(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd} || test -x /usr/sbin/${cmd} || test -x /sbin/${cmd}`]).status === 0;
}

/**
 * Create a file of `size` bytes filled with non-zero pseudo-random garbage, so free space in
 * filesystems built on it is not zero. `byte`, when given, fills with that byte instead (faster).
 */
export function garbageFile(path: string, size: number, byte?: number): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, 0);
    const chunk = Buffer.allocUnsafe(1 << 20);
    if (byte === undefined) {
      randomFillSync(chunk);
      for (let i = 0; i < chunk.length; i += 512) chunk[i] = 0xa5; // never a whole zero block
    } else {
      chunk.fill(byte);
    }
    for (let off = 0; off < size; off += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, size - off), off);
  } finally {
    closeSync(fd);
  }
}

/** Bytes allocated on the host for a file (du). */
export function allocatedBytes(path: string): number {
  return statSync(path).blocks * 512;
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Open a raw image file and give the whole disk as a volume named /dev/sda. */
export async function openRawVolume(path: string): Promise<{ volume: Volume; close: () => Promise<void> }> {
  const file = await BlockFile.open(path);
  const image = await RawImage.open(file);
  return { volume: Volume.whole(image, '/dev/sda'), close: () => image.close() };
}

/** Deterministic content for test files: `size` bytes derived from `seed`. */
export function fileContent(seed: string, size: number): Buffer {
  const out = Buffer.allocUnsafe(size);
  let block = createHash('sha256').update(seed).digest();
  for (let off = 0; off < size; off += block.length) {
    block.copy(out, off, 0, Math.min(block.length, size - off));
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

/** A path inside the repository, whether the tests run from test/ (tsx) or dist/test/ (npm test). */
export function repoPath(...parts: string[]): string {
  const here = fileURLToPath(new URL('.', import.meta.url));
  const root = here.includes('/dist/test/') ? join(here, '..', '..', '..') : join(here, '..', '..');
  return join(root, ...parts);
}

/**
 * Overwrite every range with random garbage: what a test does to the ranges a reader calls free,
 * before asking the filesystem's own fsck and tools whether anything was lost.
 */
export function clobber(path: string, ranges: Iterable<{ start: number; end: number }>): void {
  const fd = openSync(path, 'r+');
  const chunk = Buffer.allocUnsafe(1 << 20);
  randomFillSync(chunk);
  try {
    for (const r of ranges) {
      for (let off = r.start; off < r.end; off += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, r.end - off), off);
    }
  } finally {
    closeSync(fd);
  }
}

/** Write `data` at `offset` of an existing file. */
export function patchFile(path: string, offset: number, data: Buffer): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** Read `len` bytes at `offset` of a file (zero-filled past its end). */
export function readBytes(path: string, offset: number, len: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

/**
 * Release what a test started, every step whatever the others do (for `after` hooks): a failing
 * step does not leave the rest running or on disk. The first failure is thrown at the end.
 */
export async function releaseAll(...steps: Array<() => unknown>): Promise<void> {
  let first: unknown;
  for (const step of steps) {
    try {
      await step();
    } catch (e) {
      first ??= e;
    }
  }
  if (first !== undefined) throw first;
}
