/**
 * A VMDK sparse extent (monolithicSparse, streamOptimized, twoGbMaxExtentSparse pieces): grain
 * directory -> grain tables -> grain sector. GTE 0: unallocated; 1 with the zeroed-grain flag: zero.
 * Compressed grains start with {lba u64, size u32} and hold zlib data for one whole grain.
 */
import { inflate } from 'node:zlib';
import { promisify } from 'node:util';
import type { BlockFile } from '../../io/file.js';
import { CorruptError, hex } from '../../io/errors.js';
import { BlockMappedImage, type BlockState } from '../common/blockimage.js';
import type { DiskImage } from '../types.js';
import { FLAG_COMPRESSED, FLAG_ZERO_GRAIN, SECTOR, type SparseHeader } from './header.js';

const inflateAsync = promisify(inflate);
const GT_CACHE = 1024;
const GRAIN_CACHE = 16;

/** A tiny insertion-ordered cache of promises: the oldest entry is dropped when full. */
class PromiseCache<T> {
  private readonly map = new Map<number, Promise<T>>();
  constructor(private readonly limit: number) {}
  has(key: number): boolean {
    return this.map.has(key);
  }
  get(key: number, load: () => Promise<T>): Promise<T> {
    let p = this.map.get(key);
    if (!p) {
      if (this.map.size >= this.limit) this.map.delete(this.map.keys().next().value!);
      p = load();
      p.catch(() => this.map.delete(key));
      this.map.set(key, p);
    }
    return p;
  }
}

export class SparseExtent extends BlockMappedImage {
  private readonly gtCache = new PromiseCache<Uint32Array>(GT_CACHE);
  private readonly grainCache = new PromiseCache<Buffer>(GRAIN_CACHE);
  private readonly grainBytes: number;
  private readonly gtSpan: number;

  constructor(
    file: BlockFile,
    private readonly hdr: SparseHeader,
    private readonly gd: Uint32Array,
    virtualSize: number,
    backing: DiskImage | undefined,
  ) {
    super({ format: 'vmdk', file, virtualSize, blockSize: hdr.grainSize * SECTOR, backing });
    this.grainBytes = hdr.grainSize * SECTOR;
    this.gtSpan = hdr.numGTEsPerGT;
  }

  static async open(file: BlockFile, hdr: SparseHeader, virtualSize: number, backing: DiskImage | undefined): Promise<SparseExtent> {
    const grains = Math.ceil(hdr.capacity / hdr.grainSize);
    const entries = Math.ceil(grains / hdr.numGTEsPerGT);
    const at = hdr.gdOffset * SECTOR;
    const len = entries * 4;
    if (hdr.gdOffset <= 0 || at + len > file.size) {
      throw new CorruptError(
        `vmdk: ${file.path}: grain directory at ${hex(at)} (${entries} entries) is truncated: file ends at ${hex(file.size)}`,
      );
    }
    const raw = Buffer.alloc(len);
    await file.readExact(raw, at, 'vmdk grain directory');
    const gd = new Uint32Array(entries);
    const gtBytes = hdr.numGTEsPerGT * 4;
    for (let i = 0; i < entries; i++) {
      const e = raw.readUInt32LE(i * 4);
      if (e !== 0 && e * SECTOR + gtBytes > file.size) {
        throw new CorruptError(`vmdk: ${file.path}: grain directory entry ${i} at ${hex(at + i * 4)} points to grain table at ${hex(e * SECTOR)}, beyond end of file`);
      }
      gd[i] = e;
    }
    return new SparseExtent(file, hdr, gd, virtualSize, backing);
  }

  private gt(gdIndex: number): Promise<Uint32Array> {
    if (this.gtCache.has(gdIndex)) return this.gtCache.get(gdIndex, () => Promise.reject(new Error('unreachable')));
    // Tables laid out back to back (as qemu preallocates them) are read together: one read, not 32.
    const bytes = this.gtSpan * 4;
    let n = 1;
    while (n < 32 && gdIndex + n < this.gd.length && !this.gtCache.has(gdIndex + n) && this.gd[gdIndex + n] === this.gd[gdIndex]! + (n * bytes) / SECTOR) n++;
    const batch = (async () => {
      const raw = Buffer.alloc(bytes * n);
      await this.file.readExact(raw, this.gd[gdIndex]! * SECTOR, 'vmdk grain table');
      return raw;
    })();
    for (let j = n - 1; j >= 0; j--) {
      this.gtCache.get(gdIndex + j, async () => {
        const raw = await batch;
        const t = new Uint32Array(this.gtSpan);
        for (let i = 0; i < this.gtSpan; i++) t[i] = raw.readUInt32LE(j * bytes + i * 4);
        return t;
      });
    }
    return this.gtCache.get(gdIndex, () => Promise.reject(new Error('unreachable')));
  }

  protected lookup(index: number): BlockState | Promise<BlockState> {
    const gdIndex = Math.floor(index / this.gtSpan);
    if (gdIndex >= this.gd.length || this.gd[gdIndex] === 0) {
      return { kind: 'unallocated', run: this.gtSpan - (index % this.gtSpan) };
    }
    return this.gt(gdIndex).then((t) => this.entry(index, t));
  }

  private entry(index: number, t: Uint32Array): BlockState {
    const k = index % this.gtSpan;
    const gte = t[k]!;
    const isZero = gte === 1 && (this.hdr.flags & FLAG_ZERO_GRAIN) !== 0;
    if (gte === 0 || isZero) {
      // Skip the whole run of equal entries at once: an empty table costs one step, not 512.
      let run = 1;
      while (k + run < t.length && t[k + run] === gte) run++;
      return { kind: gte === 0 ? 'unallocated' : 'zero', run };
    }
    const host = gte * SECTOR;
    if (this.hdr.flags & FLAG_COMPRESSED) {
      if (host + 12 > this.file.size) throw this.beyond(index, host);
      return { kind: 'fetch', load: () => this.grainCache.get(index, () => this.loadCompressed(index, host)) };
    }
    const len = Math.min(this.grainBytes, this.virtualSize - index * this.grainBytes);
    if (host + len > this.file.size) throw this.beyond(index, host);
    return { kind: 'data', host };
  }

  private beyond(index: number, host: number): CorruptError {
    return new CorruptError(`vmdk: ${this.path}: grain ${index} at ${hex(host)} lies beyond end of file (size ${hex(this.file.size)})`);
  }

  private async loadCompressed(index: number, host: number): Promise<Buffer> {
    const head = Buffer.alloc(12);
    await this.file.readExact(head, host, 'vmdk compressed grain marker');
    const size = head.readUInt32LE(8);
    if (size === 0 || size > this.grainBytes * 2 + 4096 || host + 12 + size > this.file.size) {
      throw new CorruptError(`vmdk: ${this.path}: compressed grain ${index} at ${hex(host)} has bad size ${size}`);
    }
    const packed = Buffer.alloc(size);
    await this.file.readExact(packed, host + 12, 'vmdk compressed grain');
    let out: Buffer;
    try {
      out = await inflateAsync(packed, { maxOutputLength: this.grainBytes });
    } catch (e) {
      throw new CorruptError(`vmdk: ${this.path}: compressed grain ${index} at ${hex(host)} does not inflate: ${(e as Error).message}`);
    }
    if (out.length === this.grainBytes) return out;
    // A short last grain: the rest reads as zero.
    const full = Buffer.alloc(this.grainBytes);
    out.copy(full);
    return full;
  }
}
