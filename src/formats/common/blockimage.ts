/**
 * Shared reader for block-mapped formats (vdi, vpc, vhdx, vmdk extents): the virtual disk is cut into
 * fixed-size blocks and each block is data at a host offset, reads as zero, or is absent (falls through
 * to the backing image, or reads as zero without one). Subclasses only map a block index to a state.
 */
import type { BlockFile } from '../../io/file.js';
import { SparsifyError, hex } from '../../io/errors.js';
import type { DiskImage, ExtentKind, ImageExtent, LayerInfo } from '../types.js';

export type BlockState =
  /** `run`: this state holds for `run` blocks starting here (lets sparse metadata skip ahead). */
  | { kind: 'unallocated' | 'zero'; run?: number }
  /**
   * Data at `host` (byte offset of the block's first byte in `file`, or the image's own file).
   * `present`, when given, says per `granule` bytes whether the data is here (true) or falls through.
   */
  | { kind: 'data'; host: number; file?: BlockFile; present?: (i: number) => boolean; granule?: number }
  /** Data that must be produced whole (a compressed grain): `load` returns the full block. */
  | { kind: 'fetch'; load: () => Promise<Buffer> };

const UNALLOCATED: BlockState = { kind: 'unallocated' };

export function unallocatedState(): BlockState {
  return UNALLOCATED;
}

/** Read from a backing image, zero past its end (a smaller parent reads as zero beyond its size). */
export async function readBacking(backing: DiskImage | undefined, buf: Buffer, offset: number): Promise<void> {
  if (!backing) {
    buf.fill(0);
    return;
  }
  const avail = Math.max(0, Math.min(buf.length, backing.virtualSize - offset));
  if (avail > 0) await backing.read(buf.subarray(0, avail), offset);
  if (avail < buf.length) buf.fill(0, avail);
}

/** Coalesces ascending contiguous extents of the same kind. */
export class ExtentMerger {
  private cur: ImageExtent | undefined;
  /** Adds one extent; returns a finished extent when the kind changes. */
  push(start: number, end: number, kind: ExtentKind): ImageExtent | undefined {
    if (end <= start) return undefined;
    const c = this.cur;
    if (c && c.kind === kind && c.end === start) {
      c.end = end;
      return undefined;
    }
    this.cur = { start, end, kind };
    return c;
  }
  flush(): ImageExtent | undefined {
    const c = this.cur;
    this.cur = undefined;
    return c;
  }
}

/** Expand this layer's 'unallocated' runs through the backing image's own extents. */
export async function* throughBacking(
  layer: AsyncIterable<ImageExtent>,
  backing: DiskImage | undefined,
): AsyncIterable<ImageExtent> {
  const m = new ExtentMerger();
  for await (const e of layer) {
    if (e.kind !== 'unallocated' || !backing) {
      const out = m.push(e.start, e.end, e.kind);
      if (out) yield out;
      continue;
    }
    const split = Math.min(e.end, Math.max(e.start, backing.virtualSize));
    if (split > e.start) {
      for await (const b of backing.extents(e.start, split)) {
        const out = m.push(b.start, b.end, b.kind);
        if (out) yield out;
      }
    }
    const out = m.push(split, e.end, 'unallocated');
    if (out) yield out;
  }
  const last = m.flush();
  if (last) yield last;
}

export interface BlockImageInfo {
  format: string;
  file: BlockFile;
  virtualSize: number;
  blockSize: number;
  backing?: DiskImage;
  details?: Record<string, string | number | boolean>;
}

export abstract class BlockMappedImage implements DiskImage {
  readonly format: string;
  readonly file: BlockFile;
  readonly virtualSize: number;
  readonly blockSize: number;
  readonly backing: DiskImage | undefined;
  protected details: Record<string, string | number | boolean>;
  /** Extra files to close (vmdk extents). */
  protected extraFiles: BlockFile[] = [];

  constructor(info: BlockImageInfo) {
    this.format = info.format;
    this.file = info.file;
    this.virtualSize = info.virtualSize;
    this.blockSize = info.blockSize;
    this.backing = info.backing;
    this.details = info.details ?? {};
  }

  get path(): string {
    return this.file.path;
  }

  /** Map one block. May be synchronous; must bounds-check the host range it returns. */
  protected abstract lookup(index: number): BlockState | Promise<BlockState>;

  async read(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.virtualSize) {
      throw new SparsifyError(`${this.path}: read at ${hex(offset)} (+${buf.length}) past end of disk (${hex(this.virtualSize)})`);
    }
    const bs = this.blockSize;
    const end = offset + buf.length;
    // Pending host-contiguous read, merged across blocks to save syscalls.
    let pFile: BlockFile | undefined;
    let pHost = 0;
    let pBuf = 0;
    let pLen = 0;
    const flush = async (): Promise<void> => {
      if (pFile && pLen > 0) await pFile.readExact(buf.subarray(pBuf, pBuf + pLen), pHost, `${this.format} data`);
      pFile = undefined;
      pLen = 0;
    };
    const queue = async (file: BlockFile, host: number, at: number, len: number): Promise<void> => {
      if (pFile === file && pHost + pLen === host && pBuf + pLen === at) {
        pLen += len;
        return;
      }
      await flush();
      pFile = file;
      pHost = host;
      pBuf = at;
      pLen = len;
    };
    let pos = offset;
    while (pos < end) {
      const index = Math.floor(pos / bs);
      const inBlock = pos - index * bs;
      const st = await this.lookup(index);
      const runBlocks = (st.kind === 'zero' || st.kind === 'unallocated') && st.run && st.run > 1 ? st.run : 1;
      const stop = Math.min(end, (index + runBlocks) * bs);
      const at = pos - offset;
      const piece = buf.subarray(at, stop - offset);
      switch (st.kind) {
        case 'zero':
          piece.fill(0);
          break;
        case 'unallocated':
          await readBacking(this.backing, piece, pos);
          break;
        case 'fetch': {
          const whole = await st.load();
          whole.copy(piece, 0, inBlock, inBlock + piece.length);
          break;
        }
        case 'data': {
          const file = st.file ?? this.file;
          if (!st.present) {
            await queue(file, st.host + inBlock, at, piece.length);
            break;
          }
          const g = st.granule ?? 512;
          let p = 0;
          while (p < piece.length) {
            const gi = Math.floor((inBlock + p) / g);
            const here = st.present(gi);
            let q = Math.min(piece.length, (gi + 1) * g - inBlock);
            while (q < piece.length && st.present(Math.floor((inBlock + q) / g)) === here) {
              q = Math.min(piece.length, q + g);
            }
            if (here) await queue(file, st.host + inBlock + p, at + p, q - p);
            else await readBacking(this.backing, piece.subarray(p, q), pos + p);
            p = q;
          }
          break;
        }
      }
      pos = stop;
    }
    await flush();
  }

  /** This layer alone: data / zero / unallocated, before looking through the backing image. */
  protected async *layerExtents(start: number, end: number): AsyncIterable<ImageExtent> {
    const bs = this.blockSize;
    const m = new ExtentMerger();
    let pos = start;
    while (pos < end) {
      const index = Math.floor(pos / bs);
      const st = await this.lookup(index);
      const runBlocks = (st.kind === 'zero' || st.kind === 'unallocated') && st.run && st.run > 1 ? st.run : 1;
      const stop = Math.min(end, (index + runBlocks) * bs);
      let out: ImageExtent | undefined;
      if (st.kind === 'data' && st.present) {
        const g = st.granule ?? 512;
        const base = index * bs;
        for (let p = pos; p < stop; ) {
          const gi = Math.floor((p - base) / g);
          const q = Math.min(stop, base + (gi + 1) * g);
          out = m.push(p, q, st.present(gi) ? 'data' : 'unallocated');
          if (out) yield out;
          p = q;
        }
        pos = stop;
        continue;
      }
      out = m.push(pos, stop, st.kind === 'fetch' ? 'data' : st.kind);
      if (out) yield out;
      pos = stop;
    }
    const last = m.flush();
    if (last) yield last;
  }

  extents(start: number, end: number): AsyncIterable<ImageExtent> {
    start = Math.max(0, start);
    end = Math.min(end, this.virtualSize);
    return throughBacking(this.layerExtents(start, end), this.backing);
  }

  ownExtents(start: number, end: number): AsyncIterable<ImageExtent> {
    return this.layerExtents(Math.max(0, start), Math.min(end, this.virtualSize));
  }

  layers(): LayerInfo[] {
    const own: LayerInfo = {
      path: this.path,
      format: this.format,
      virtualSize: this.virtualSize,
      allocatedBytes: this.allocated,
      details: this.details,
    };
    return [own, ...(this.backing ? this.backing.layers() : [])];
  }

  /** st_blocks of the file(s), filled in by the opener. */
  allocated = 0;

  async close(): Promise<void> {
    for (const f of this.extraFiles) await f.close();
    await this.file.close();
    if (this.backing) await this.backing.close();
  }
}
