/**
 * A qcow2 image as a DiskImage: reads through L1/L2 into the image file (or its external data
 * file), decompresses compressed clusters, and falls through to the backing image where nothing
 * is allocated.
 */
import { dirname, isAbsolute, resolve } from 'node:path';
import { BlockFile } from '../../io/file.js';
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';
import type { DiskImage, HostRun, ImageExtent, LayerInfo, OpenContext } from '../types.js';
import { decompressCluster } from './compression.js';
import { COMPAT_LAZY_REFCOUNTS, INCOMPAT_DIRTY, parseHeader, type Qcow2Header } from './header.js';
import { PromiseLru } from './lru.js';
import { Qcow2Mapping, type Segment } from './mapping.js';
import { ExtentMerger } from '../common/blockimage.js';

/** Decompressed clusters kept for sequential readers that read a cluster in several pieces. */
const DECOMPRESSED_CACHE_BYTES = 8 << 20;

export class Qcow2Image implements DiskImage {
  readonly format = 'qcow2';
  private readonly decompressed: PromiseLru<Buffer>;

  private constructor(
    /** The qcow2 file itself (in-place discard works on it). */
    readonly file: BlockFile,
    readonly header: Qcow2Header,
    private readonly map: Qcow2Mapping,
    private readonly dataFile: BlockFile,
    private readonly backing: DiskImage | undefined,
    private readonly allocated: number,
    readonly backingName: string | undefined,
  ) {
    this.decompressed = new PromiseLru(Math.max(2, Math.floor(DECOMPRESSED_CACHE_BYTES / header.clusterSize)));
  }

  static async open(file: BlockFile, ctx: OpenContext): Promise<Qcow2Image> {
    const path = file.path;
    // The header cluster holds the header and its extensions; its size is in the first bytes.
    const first = Buffer.alloc(Math.min(file.size, 24));
    await file.readExact(first, 0, 'qcow2 header');
    const bits = first.length >= 24 ? first.readUInt32BE(20) : 0;
    const headLen = Math.min(file.size, 2 ** Math.min(Math.max(bits, 9), 21));
    const head = Buffer.alloc(headLen);
    await file.readExact(head, 0, 'qcow2 header');
    const h = parseHeader(head, file.size, path);
    const l1 = Buffer.alloc(h.l1Size * 8);
    if (h.l1Size > 0) await file.readExact(l1, h.l1TableOffset, 'qcow2 L1 table');
    const map = new Qcow2Mapping(file, h, l1);

    let backingName: string | undefined;
    if (h.backingFileOffset !== 0) {
      const nameBuf = Buffer.alloc(h.backingFileSize);
      await file.readExact(nameBuf, h.backingFileOffset, 'qcow2 backing file name');
      backingName = nameBuf.toString('utf8');
      if (backingName.includes('\0')) throw new CorruptError(`${path}: qcow2: backing file name contains a NUL byte`);
    }

    let dataFile = file;
    let backing: DiskImage | undefined;
    try {
      if (h.hasDataFile) {
        const name = h.dataFile!;
        dataFile = await BlockFile.open(isAbsolute(name) ? name : resolve(dirname(path), name));
      }
      if (backingName !== undefined) backing = await ctx.openBacking(backingName, h.backingFormat, path);
      const allocated = (await file.allocatedBytes()) + (dataFile !== file ? await dataFile.allocatedBytes() : 0);
      return new Qcow2Image(file, h, map, dataFile, backing, allocated, backingName);
    } catch (e) {
      if (dataFile !== file) await dataFile.close();
      if (backing) await backing.close();
      throw e;
    }
  }

  get path(): string {
    return this.file.path;
  }

  get virtualSize(): number {
    return this.header.virtualSize;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    const end = offset + buf.length;
    if (offset < 0 || end > this.virtualSize) {
      throw new SparsifyError(`${this.path}: read at ${hex(offset)} (+${buf.length}) past end of disk (${hex(this.virtualSize)})`);
    }
    for await (const batch of this.map.walk(offset, end)) {
      for (const s of batch) await this.readSegment(buf.subarray(s.start - offset, s.end - offset), s);
    }
  }

  private async readSegment(dst: Buffer, s: Segment): Promise<void> {
    switch (s.kind) {
      case 'zero':
        dst.fill(0);
        return;
      case 'data':
        // A cluster's tail past end of file reads as zero, as in qemu (the file may end mid-cluster).
        if (this.dataFile === this.file) await this.file.readZeroPadded(dst, s.host);
        else await this.dataFile.readZeroPadded(dst, s.host);
        return;
      case 'compressed': {
        const cluster = await this.decompress(s);
        cluster.copy(dst, 0, s.start - s.clusterStart, s.end - s.clusterStart);
        return;
      }
      case 'unallocated': {
        const b = this.backing;
        const inBacking = b ? Math.max(0, Math.min(s.end, b.virtualSize) - s.start) : 0;
        if (b && inBacking > 0) await b.read(dst.subarray(0, inBacking), s.start);
        dst.fill(0, inBacking);
        return;
      }
    }
  }

  private decompress(s: Segment): Promise<Buffer> {
    return this.decompressed.get(s.host, async () => {
      const src = Buffer.alloc(s.compressedLength);
      await this.file.readZeroPadded(src, s.host);
      const out = decompressCluster(src, this.header.clusterSize, this.header.compressionType);
      if (typeof out === 'string') {
        throw new CorruptError(
          `${this.path}: qcow2: compressed cluster at ${hex(s.host)} (guest offset ${hex(s.clusterStart)}) ${out}`,
        );
      }
      return out;
    });
  }

  async *extents(start: number, end: number): AsyncIterable<ImageExtent> {
    end = Math.min(end, this.virtualSize);
    let pending: ImageExtent | undefined;
    // Adjacent runs of one kind come out as one extent, also across layers.
    const out: ImageExtent[] = [];
    const add = (e: ImageExtent): void => {
      if (e.end <= e.start) return;
      if (pending && pending.kind === e.kind && pending.end === e.start) pending.end = e.end;
      else {
        if (pending) out.push(pending);
        pending = { ...e };
      }
    };
    for await (const batch of this.map.walk(start, end)) {
      for (const s of batch) {
        if (s.kind !== 'unallocated') add({ start: s.start, end: s.end, kind: s.kind === 'zero' ? 'zero' : 'data' });
        else if (!this.backing) add({ start: s.start, end: s.end, kind: 'unallocated' });
        else {
          const bEnd = Math.min(s.end, this.backing.virtualSize);
          if (s.start < bEnd) {
            for await (const e of this.backing.extents(s.start, bEnd)) {
              add(e);
              if (out.length) yield* out.splice(0);
            }
          }
          add({ start: Math.max(s.start, bEnd), end: s.end, kind: 'unallocated' });
        }
      }
      if (out.length) yield* out.splice(0);
    }
    if (pending) yield pending;
  }

  /** Standard data clusters of this layer (or its data file), host-contiguous runs merged; backing data is not listed. */
  async *hostRuns(start: number, end: number): AsyncIterable<HostRun> {
    end = Math.min(end, this.virtualSize);
    for await (const batch of this.map.walk(start, end)) {
      for (const s of batch) if (s.kind === 'data') yield { start: s.start, end: s.end, file: this.dataFile, fileOffset: s.host };
    }
  }

  /** This file's clusters alone: data (also compressed), zero, or unallocated (falls through). */
  async *ownExtents(start: number, end: number): AsyncIterable<ImageExtent> {
    end = Math.min(end, this.virtualSize);
    const m = new ExtentMerger();
    for await (const batch of this.map.walk(Math.max(0, start), end)) {
      for (const s of batch) {
        const out = m.push(s.start, s.end, s.kind === 'compressed' ? 'data' : s.kind);
        if (out) yield out;
      }
    }
    const last = m.flush();
    if (last) yield last;
  }

  layers(): LayerInfo[] {
    const h = this.header;
    const details: Record<string, string | number | boolean> = {
      cluster_size: h.clusterSize,
      compat: h.version === 2 ? '0.10' : '1.1',
      compression_type: h.compressionType,
      extended_l2: h.extendedL2,
      refcount_bits: 2 ** h.refcountOrder,
      lazy_refcounts: (h.compatible & COMPAT_LAZY_REFCOUNTS) !== 0n,
      dirty: (h.incompatible & INCOMPAT_DIRTY) !== 0n,
    };
    if (h.nbSnapshots) details.snapshots = h.nbSnapshots;
    if (h.hasBitmaps) details.bitmaps = true;
    if (h.hasDataFile) {
      details.data_file = h.dataFile!;
      details.data_file_raw = h.dataFileRaw;
    }
    if (this.backingName !== undefined) details.backing_file = this.backingName;
    if (h.backingFormat !== undefined) details.backing_fmt = h.backingFormat;
    const me: LayerInfo = { path: this.path, format: 'qcow2', virtualSize: this.virtualSize, allocatedBytes: this.allocated, details };
    return [me, ...(this.backing ? this.backing.layers() : [])];
  }

  async close(): Promise<void> {
    if (this.backing) await this.backing.close();
    if (this.dataFile !== this.file) await this.dataFile.close();
    await this.file.close();
  }
}
