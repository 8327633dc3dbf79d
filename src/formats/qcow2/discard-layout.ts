/**
 * The qcow2 metadata in-place changes go through: the L1 table (kept in memory, written back entry
 * by entry, or moved whole with the header pointing at the copy), L2 tables (read fresh,
 * bounds-checked; 8-byte entries, or 16-byte extended entries whose second half holds the
 * subclusters' allocated and zero bits), and the set of metadata clusters no data entry may point
 * into (header, L1, refcount table and blocks, L2 tables, and what bitmaps add).
 */
import type { BlockFile } from '../../io/file.js';
import { CorruptError, hex } from '../../io/errors.js';
import type { Qcow2Header } from './header.js';
import type { Qcow2Refcounts } from './discard-refcount.js';

export const L2_COPIED = 0x80000000;
export const L2_COMPRESSED = 0x40000000;
/** Header field offsets (qcow2 spec, "Header"). */
export const HEADER_L1_TABLE_OFFSET = 40;
export const HEADER_REFCOUNT_TABLE_OFFSET = 48;

/** Host offset (bits 9-55) of a standard descriptor, from its two big-endian words. */
export function standardHost(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
}

/** A compressed descriptor's host byte offset and its 512-byte sectors (qemu counts every sector it touches). */
export interface Fragment {
  host: number;
  sectors: number;
}

export class Qcow2Layout {
  readonly l2Entries: number;
  /** Bytes per L2 entry: 8, or 16 with extended L2 entries (subclusters). */
  readonly entryBytes: number;
  private readonly cs: number;
  /** Host cluster indices holding metadata. */
  private readonly metadata = new Set<number>();
  /** Compressed descriptor: bits [0, x) host offset, bits [x, 62) extra 512-byte sectors. */
  private readonly csizeShift: bigint;

  private constructor(
    private readonly file: BlockFile,
    private readonly h: Qcow2Header,
    private readonly l1: Buffer,
  ) {
    this.cs = h.clusterSize;
    this.entryBytes = h.extendedL2 ? 16 : 8;
    this.l2Entries = h.clusterSize / this.entryBytes;
    this.csizeShift = BigInt(62 - (h.clusterBits - 8));
  }

  static async load(file: BlockFile, h: Qcow2Header, refcounts: Qcow2Refcounts): Promise<Qcow2Layout> {
    const l1 = Buffer.alloc(h.l1Size * 8);
    if (h.l1Size > 0) await file.readExact(l1, h.l1TableOffset, 'qcow2 L1 table');
    const layout = new Qcow2Layout(file, h, l1);
    layout.markRange(0, h.clusterSize);
    if (h.backingFileOffset) layout.markRange(h.backingFileOffset, h.backingFileSize);
    layout.markRange(h.l1TableOffset, h.l1Size * 8);
    layout.markRange(h.refcountTableOffset, h.refcountTableClusters * h.clusterSize);
    for (let i = 0; i < refcounts.tableEntries; i++) {
      const off = refcounts.blockOffset(i);
      if (off) layout.markRange(off, h.clusterSize);
    }
    for (let i = 0; i < h.l1Size; i++) {
      const off = layout.l2Offset(i);
      if (off) layout.metadata.add(off / h.clusterSize);
    }
    return layout;
  }

  private fail(msg: string): never {
    throw new CorruptError(`${this.file.path}: qcow2: ${msg}`);
  }

  /** Count the clusters of host range [off, off+len) as metadata (bitmaps add theirs). */
  markRange(off: number, len: number): void {
    for (let c = Math.floor(off / this.cs); c * this.cs < off + len; c++) this.metadata.add(c);
  }

  unmarkRange(off: number, len: number): void {
    for (let c = Math.floor(off / this.cs); c * this.cs < off + len; c++) this.metadata.delete(c);
  }

  get l1Size(): number {
    return this.h.l1Size;
  }

  /** Host offset of the L2 table of L1 entry `i` (0: none), validated. */
  l2Offset(i: number): number {
    if (i >= this.h.l1Size) return 0;
    const off = standardHost(this.l1.readUInt32BE(i * 8), this.l1.readUInt32BE(i * 8 + 4));
    if (off === 0) return 0;
    const cs = this.cs;
    const what = `L2 table at ${hex(off)} (L1 index ${i})`;
    if (off % cs !== 0) this.fail(`${what} is not aligned to the cluster size (${hex(cs)})`);
    if (off < cs) this.fail(`${what} overlaps the image header`);
    if (off + cs > this.file.size) this.fail(`${what} lies beyond end of file (size ${hex(this.file.size)})`);
    return off;
  }

  async readL2(i: number): Promise<Buffer> {
    const off = this.l2Offset(i);
    const buf = Buffer.allocUnsafe(this.cs);
    await this.file.readExact(buf, off, `qcow2 L2 table at ${hex(off)}`);
    return buf;
  }

  /** Drop the L2 table of L1 entry `i`: write the cleared entry (the caller syncs). */
  async clearL1(i: number): Promise<void> {
    const off = this.l2Offset(i);
    await this.setL1(i, 0);
    this.metadata.delete(off / this.cs);
  }

  /** Point L1 entry `i` at an L2 table with refcount 1 (COPIED), or clear it (0); the caller syncs. */
  async setL1(i: number, offset: number): Promise<void> {
    const old = this.l2Offset(i);
    const e = Buffer.alloc(8);
    if (offset !== 0) e.writeBigUInt64BE(BigInt(offset) | (1n << 63n));
    e.copy(this.l1, i * 8);
    await this.file.write(e, this.h.l1TableOffset + i * 8);
    if (old) this.metadata.delete(old / this.cs);
    if (offset) this.metadata.add(offset / this.cs);
  }

  /** The L1 table's bytes as they are (in memory), to copy it elsewhere. */
  l1Bytes(): Buffer {
    return this.l1;
  }

  /** Host cluster of a standard data entry, refused when it points at metadata or past the file. */
  dataCluster(host: number, guest: number): number {
    const cs = this.cs;
    if (host % cs !== 0) this.fail(`data cluster at ${hex(host)} (guest offset ${hex(guest)}) is not aligned to the cluster size`);
    const c = host / cs;
    if (this.metadata.has(c)) this.fail(`data cluster at ${hex(host)} (guest offset ${hex(guest)}) overlaps qcow2 metadata`);
    if (host >= this.file.size) this.fail(`data cluster at ${hex(host)} (guest offset ${hex(guest)}) lies beyond end of file (size ${hex(this.file.size)})`);
    return c;
  }

  /** The bytes a compressed descriptor points at, validated. */
  fragment(hi: number, lo: number, guest: number): Fragment {
    const desc = (BigInt(hi & 0x3fffffff) << 32n) | BigInt(lo >>> 0);
    const host = Number(desc & ((1n << this.csizeShift) - 1n));
    const sectors = Number(desc >> this.csizeShift) + 1;
    if (host < this.cs || host >= this.file.size) this.fail(`compressed cluster at ${hex(host)} (guest offset ${hex(guest)}) lies outside the file`);
    return { host, sectors };
  }

  /** The two words of a compressed descriptor for a fragment at `host` of `sectors` sectors. */
  fragmentWords(host: number, sectors: number): { hi: number; lo: number } {
    const desc = (BigInt(sectors - 1) << this.csizeShift) | BigInt(host) | (1n << 62n);
    return { hi: Number(desc >> 32n), lo: Number(desc & 0xffffffffn) };
  }

  /** Host clusters a compressed entry holds one reference to each (every cluster its sectors touch). */
  compressedClusters(hi: number, lo: number, guest: number): number[] {
    const f = this.fragment(hi, lo, guest);
    const start = f.host - (f.host % 512);
    const end = start + f.sectors * 512;
    const out: number[] = [];
    for (let c = Math.floor(start / this.cs); c <= Math.floor((end - 1) / this.cs); c++) {
      if (this.metadata.has(c)) this.fail(`compressed cluster at ${hex(f.host)} (guest offset ${hex(guest)}) overlaps qcow2 metadata`);
      out.push(c);
    }
    return out;
  }

  /** Mark every metadata cluster in a bitmap of referenced clusters. */
  markMetadata(set: (c: number) => void): void {
    for (const c of this.metadata) set(c);
  }

  isMetadata(c: number): boolean {
    return this.metadata.has(c);
  }
}
