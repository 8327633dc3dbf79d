/**
 * qcow2 guest-to-host mapping: L1 table -> L2 tables (cached, bounds-checked) -> cluster or
 * subcluster descriptors, turned into runs of guest bytes with one meaning each.
 */
import type { BlockFile } from '../../io/file.js';
import { CorruptError, hex } from '../../io/errors.js';
import type { Qcow2Header } from './header.js';
import { PromiseLru } from './lru.js';

export type SegmentKind = 'data' | 'zero' | 'unallocated' | 'compressed';

/** A run of guest bytes [start, end) with one meaning. */
export interface Segment {
  start: number;
  end: number;
  kind: SegmentKind;
  /** data: host offset of `start` (in the data file). compressed: host offset of the compressed bytes. */
  host: number;
  /** compressed: length in bytes of the compressed data as the descriptor bounds it. */
  compressedLength: number;
  /** compressed: guest offset of the cluster start. */
  clusterStart: number;
}

/** Joins adjacent runs of the same kind (data only when host-contiguous, compressed never). */
class SegmentMerger {
  private pending: Segment | undefined;
  out: Segment[] = [];

  push(start: number, end: number, kind: SegmentKind, host = 0, compressedLength = 0, clusterStart = 0): void {
    const p = this.pending;
    if (p && p.end === start && p.kind === kind && kind !== 'compressed' && (kind !== 'data' || p.host + (p.end - p.start) === host)) {
      p.end = end;
      return;
    }
    if (p) this.out.push(p);
    this.pending = { start, end, kind, host, compressedLength, clusterStart };
  }

  take(final: boolean): Segment[] {
    if (final && this.pending) {
      this.out.push(this.pending);
      this.pending = undefined;
    }
    const o = this.out;
    this.out = [];
    return o;
  }
}

/** Bytes of L2 tables kept in memory: enough for ~ 16 GiB of mapped guest data at 64 KiB clusters. */
const L2_CACHE_BYTES = 16 << 20;

export class Qcow2Mapping {
  readonly clusterSize: number;
  readonly l2Entries: number;
  private readonly entryBytes: number;
  private readonly l2Cache: PromiseLru<Buffer>;
  private readonly subclusterSize: number;
  /** Compressed descriptor layout: bits [0, x) offset, bits [x, 62) extra sectors. */
  private readonly csizeShift: bigint;

  constructor(
    private readonly file: BlockFile,
    private readonly h: Qcow2Header,
    private readonly l1: Buffer,
  ) {
    this.clusterSize = h.clusterSize;
    this.entryBytes = h.extendedL2 ? 16 : 8;
    this.l2Entries = h.clusterSize / this.entryBytes;
    this.subclusterSize = h.extendedL2 ? h.clusterSize / 32 : h.clusterSize;
    this.l2Cache = new PromiseLru(Math.max(4, Math.floor(L2_CACHE_BYTES / h.clusterSize)));
    this.csizeShift = BigInt(62 - (h.clusterBits - 8));
  }

  private fail(msg: string): never {
    throw new CorruptError(`${this.file.path}: qcow2: ${msg}`);
  }

  /** Host offset of the L2 table for L1 index `i`, or 0 when the whole range is unallocated. */
  l2Offset(i: number): number {
    if (i >= this.h.l1Size) return 0;
    const hi = this.l1.readUInt32BE(i * 8);
    const lo = this.l1.readUInt32BE(i * 8 + 4);
    return (hi & 0x00ffffff) * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
  }

  private loadL2(index: number, off: number): Promise<Buffer> {
    return this.l2Cache.get(off, async () => {
      const cs = this.clusterSize;
      const what = `L2 table at ${hex(off)} (L1 index ${index})`;
      if (off < cs) this.fail(`${what} overlaps the image header`);
      if (off % cs !== 0) this.fail(`${what} is not aligned to the cluster size (${hex(cs)})`);
      if (off + cs > this.file.size) this.fail(`L2 table at ${hex(off)} lies beyond end of file (size ${hex(this.file.size)})`);
      const l1Start = this.h.l1TableOffset;
      if (off < l1Start + this.h.l1Size * 8 && off + cs > l1Start) this.fail(`${what} overlaps the L1 table`);
      const rtStart = this.h.refcountTableOffset;
      if (off < rtStart + this.h.refcountTableClusters * cs && off + cs > rtStart) this.fail(`${what} overlaps the refcount table`);
      const buf = Buffer.allocUnsafe(cs);
      await this.file.readExact(buf, off, `qcow2 ${what}`);
      return buf;
    });
  }

  /**
   * Describe guest range [start, end) as segments, in batches (one per L2 table or unallocated L1
   * range). Work follows the L1 entries that are set, not the size of the range.
   */
  async *walk(start: number, end: number): AsyncGenerator<Segment[]> {
    const cs = this.clusterSize;
    const span = cs * this.l2Entries;
    const merger = new SegmentMerger();
    let pos = start;
    while (pos < end) {
      const l1i = Math.floor(pos / span);
      const spanEnd = Math.min(end, (l1i + 1) * span);
      const l2off = this.l2Offset(l1i);
      if (l2off === 0) {
        merger.push(pos, spanEnd, 'unallocated');
      } else {
        const table = await this.loadL2(l1i, l2off);
        this.decodeRange(table, l1i * span, pos, spanEnd, merger);
      }
      pos = spanEnd;
      const batch = merger.take(pos >= end);
      if (batch.length) yield batch;
    }
  }

  /** Decode the L2 entries of one table (covering guest bytes from `base`) for [pos, end). */
  private decodeRange(t: Buffer, base: number, pos: number, end: number, m: SegmentMerger): void {
    const cs = this.clusterSize;
    const h = this.h;
    while (pos < end) {
      const idx = Math.floor((pos - base) / cs);
      const cStart = base + idx * cs;
      const cEnd = Math.min(cStart + cs, end);
      const e = idx * this.entryBytes;
      const hi = t.readUInt32BE(e);
      const lo = t.readUInt32BE(e + 4);
      if (hi & 0x40000000) {
        const { host, length } = this.compressed(hi, lo, cStart);
        m.push(pos, cEnd, 'compressed', host, length, cStart);
        pos = cEnd;
        continue;
      }
      const host = (hi & 0x00ffffff) * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
      const copied = (hi & 0x80000000) !== 0;
      const allocated = host !== 0 || (h.hasDataFile && copied);
      if (!h.extendedL2) {
        if (lo & 1) m.push(pos, cEnd, 'zero');
        else if (allocated) m.push(pos, cEnd, 'data', this.checkData(host, cStart) + (pos - cStart));
        else m.push(pos, cEnd, 'unallocated');
        pos = cEnd;
        continue;
      }
      const allocBits = t.readUInt32BE(e + 12);
      const zeroBits = t.readUInt32BE(e + 8);
      if (allocBits & zeroBits) this.fail(`L2 entry for guest offset ${hex(cStart)} marks a subcluster both allocated and zero`);
      if (allocBits && !allocated) this.fail(`L2 entry for guest offset ${hex(cStart)} has allocated subclusters but no host offset`);
      if (allocBits) this.checkData(host, cStart);
      const sc = this.subclusterSize;
      while (pos < cEnd) {
        const s = Math.floor((pos - cStart) / sc);
        const sEnd = Math.min(cStart + (s + 1) * sc, cEnd);
        const bit = 1 << s;
        if (allocBits & bit) m.push(pos, sEnd, 'data', host + (pos - cStart));
        else if (zeroBits & bit) m.push(pos, sEnd, 'zero');
        else m.push(pos, sEnd, 'unallocated');
        pos = sEnd;
      }
    }
  }

  /** Validate a standard cluster's host offset; returns it. */
  private checkData(host: number, guest: number): number {
    const cs = this.clusterSize;
    if (host % cs !== 0) this.fail(`data cluster at ${hex(host)} (guest offset ${hex(guest)}) is not aligned to the cluster size`);
    if (this.h.hasDataFile) return host; // external data files are not refcounted; sizes checked on read
    if (host < cs) this.fail(`data cluster for guest offset ${hex(guest)} overlaps the image header`);
    if (host >= this.file.size) {
      this.fail(`data cluster at ${hex(host)} (guest offset ${hex(guest)}) lies beyond end of file (size ${hex(this.file.size)})`);
    }
    return host;
  }

  private compressed(hi: number, lo: number, guest: number): { host: number; length: number } {
    if (this.h.hasDataFile) this.fail(`compressed cluster at guest offset ${hex(guest)} in an image with an external data file`);
    const desc = (BigInt(hi & 0x3fffffff) << 32n) | BigInt(lo >>> 0);
    const host = Number(desc & ((1n << this.csizeShift) - 1n));
    const sectors = Number(desc >> this.csizeShift) + 1;
    const length = sectors * 512 - (host % 512);
    if (host < this.clusterSize) this.fail(`compressed cluster for guest offset ${hex(guest)} overlaps the image header`);
    if (host >= this.file.size) {
      this.fail(`compressed cluster at ${hex(host)} (guest offset ${hex(guest)}) lies beyond end of file (size ${hex(this.file.size)})`);
    }
    return { host, length };
  }
}
