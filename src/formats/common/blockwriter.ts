/**
 * Shared writer plumbing for block-mapped formats: an output file, option checking, and a writer that
 * places ascending data writes straight into blocks allocated on first non-zero write. A fresh file
 * reads as zero wherever nothing was written, so a partly written block needs no explicit zero fill,
 * and all-zero pieces never allocate a block at all.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { SparsifyError, hex } from '../../io/errors.js';
import type { FormatOptions } from '../types.js';

export class OutputFile {
  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
  ) {}

  static async create(path: string): Promise<OutputFile> {
    try {
      return new OutputFile(path, await open(path, 'w+'));
    } catch (e) {
      throw new SparsifyError(`cannot create ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.handle.write(buf, done, buf.length - done, offset + done);
      done += bytesWritten;
    }
  }

  async truncate(size: number): Promise<void> {
    await this.handle.truncate(size);
  }

  async sync(): Promise<void> {
    await this.handle.datasync();
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

const ZEROS = Buffer.alloc(1 << 16);

export function isZero(buf: Buffer): boolean {
  for (let off = 0; off < buf.length; off += ZEROS.length) {
    const n = Math.min(ZEROS.length, buf.length - off);
    if (!buf.subarray(off, off + n).equals(ZEROS.subarray(0, n))) return false;
  }
  return true;
}

/** Parse -o options against the driver's list; unknown keys or values fail listing the valid ones. */
export function checkOptions(
  format: string,
  options: FormatOptions,
  valid: ReadonlyMap<string, string>,
): void {
  for (const key of options.keys()) {
    if (!valid.has(key)) {
      const list = [...valid].map(([k, d]) => `${k} (${d})`).join(', ');
      throw new SparsifyError(`${format}: unknown output option '${key}'; valid options: ${list}`);
    }
  }
}

/** An option whose value must be one of `choices`; returns the default when absent. */
export function choiceOption<T extends string>(format: string, options: FormatOptions, key: string, choices: readonly T[], dflt: T): T {
  const v = options.get(key);
  if (v === undefined) return dflt;
  if (!(choices as readonly string[]).includes(v)) {
    throw new SparsifyError(`${format}: invalid value '${v}' for option ${key}; valid values: ${choices.join(', ')}`);
  }
  return v as T;
}

export function boolOption(format: string, options: FormatOptions, key: string, dflt: boolean): boolean {
  const v = choiceOption(format, options, key, ['on', 'off', 'true', 'false', 'yes', 'no'] as const, dflt ? 'on' : 'off');
  return v === 'on' || v === 'true' || v === 'yes';
}

/** A size option (bytes, with optional k/M/G suffix as qemu-img accepts). */
export function sizeOption(format: string, options: FormatOptions, key: string): number | undefined {
  const v = options.get(key);
  if (v === undefined) return undefined;
  const m = /^(\d+)([kKmMgGtT]?)[bB]?$/.exec(v);
  if (!m) throw new SparsifyError(`${format}: invalid size '${v}' for option ${key}`);
  const mult = { '': 1, k: 1024, m: 1 << 20, g: 1 << 30, t: 2 ** 40 }[m[2]!.toLowerCase()]!;
  return Number(m[1]) * mult;
}

export function randomGuid(): Buffer {
  const g = randomBytes(16);
  g[7] = (g[7]! & 0x0f) | 0x40; // version 4 (mixed-endian field 3 high byte)
  g[8] = (g[8]! & 0x3f) | 0x80;
  return g;
}

/**
 * Ascending writes of any alignment, routed into blocks. `allocate(index)` returns the host offset of a
 * block's first byte, allocating it; `hostOf(index)` returns it if already allocated.
 */
export class DirectBlockWriter {
  private last = 0;

  constructor(
    private readonly format: string,
    private readonly out: OutputFile,
    private readonly virtualSize: number,
    private readonly blockSize: number,
    private readonly hostOf: (index: number) => number | undefined,
    private readonly allocate: (index: number) => Promise<number>,
  ) {}

  async write(buf: Buffer, offset: number): Promise<void> {
    if (offset < this.last) {
      throw new SparsifyError(`${this.format} writer: write at ${hex(offset)} is not ascending (previous end ${hex(this.last)})`);
    }
    if (offset + buf.length > this.virtualSize) {
      throw new SparsifyError(`${this.format} writer: write at ${hex(offset)} (+${buf.length}) past end of disk (${hex(this.virtualSize)})`);
    }
    this.last = offset + buf.length;
    let pos = offset;
    const end = offset + buf.length;
    while (pos < end) {
      const index = Math.floor(pos / this.blockSize);
      const stop = Math.min(end, (index + 1) * this.blockSize);
      const piece = buf.subarray(pos - offset, stop - offset);
      let host = this.hostOf(index);
      if (host === undefined) {
        if (isZero(piece)) {
          pos = stop;
          continue;
        }
        host = await this.allocate(index);
      }
      await this.out.write(piece, host + (pos - index * this.blockSize));
      pos = stop;
    }
  }
}

export function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}
