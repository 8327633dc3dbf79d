/**
 * The qcow2 metadata in-place discard changes or must never free: the L1 table (kept in memory and
 * written back entry by entry), L2 tables (read fresh, bounds-checked), and the set of metadata
 * clusters (header, L1, refcount table and blocks, L2 tables) no data entry may point into.
 */
import type { BlockFile } from '../../io/file.js';
import { CorruptError, hex } from '../../io/errors.js';
import type { Qcow2Header } from './header.js';
import type { Qcow2Refcounts } from './discard-refcount.js';

export class Qcow2Layout {
  readonly l2Entries: number;
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
    this.l2Entries = h.clusterSize / 8;
    this.csizeShift = BigInt(62 - (h.clusterBits - 8));
  }

  static async load(file: BlockFile, h: Qcow2Header, refcounts: Qcow2Refcounts): Promise<Qcow2Layout> {
    const l1 = Buffer.alloc(h.l1Size * 8);
    if (h.l1Size > 0) await file.readExact(l1, h.l1TableOffset, 'qcow2 L1 table');
    const layout = new Qcow2Layout(file, h, l1);
    const cs = h.clusterSize;
    const mark = (off: number, len: number): void => {
      for (let c = Math.floor(off / cs); c * cs < off + len; c++) layout.metadata.add(c);
    };
    mark(0, cs);
    if (h.backingFileOffset) mark(h.backingFileOffset, h.backingFileSize);
    mark(h.l1TableOffset, h.l1Size * 8);
    mark(h.refcountTableOffset, h.refcountTableClusters * cs);
    for (let i = 0; i < refcounts.tableEntries; i++) {
      const off = refcounts.blockOffset(i);
      if (off) mark(off, cs);
    }
    for (let i = 0; i < h.l1Size; i++) {
      const off = layout.l2Offset(i);
      if (off) layout.metadata.add(off / cs);
    }
    return layout;
  }

  private fail(msg: string): never {
    throw new CorruptError(`${this.file.path}: qcow2: ${msg}`);
  }

  get l1Size(): number {
    return this.h.l1Size;
  }

  /** Host offset of the L2 table of L1 entry `i` (0: none), validated. */
  l2Offset(i: number): number {
    if (i >= this.h.l1Size) return 0;
    const hi = this.l1.readUInt32BE(i * 8);
    const lo = this.l1.readUInt32BE(i * 8 + 4);
    const off = (hi & 0x00ffffff) * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
    if (off === 0) return 0;
    const cs = this.cs;
    const what = `L2 table at ${hex(off)} (L1 index ${i})`;
    if (off % cs !== 0) this.fail(`${what} is not aligned to the cluster size (${hex(cs)})`);
    if (off < cs) this.fail(`${what} overlaps the image header`);
    if (off + cs > this.file.size) this.fail(`${what} lies beyond end of file (size ${hex(this.file.size)})`);
    return off;
  }

  /** Is the L1 entry's COPIED flag set (the L2 table has refcount 1 and may be changed in place)? */
  l1Copied(i: number): boolean {
    return (this.l1.readUInt32BE(i * 8) & 0x80000000) !== 0;
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
    this.l1.fill(0, i * 8, i * 8 + 8);
    await this.file.write(Buffer.alloc(8), this.h.l1TableOffset + i * 8);
    this.metadata.delete(off / this.cs);
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

  /** Host clusters a compressed entry holds one reference to each (qemu counts every cluster its sectors touch). */
  compressedClusters(hi: number, lo: number, guest: number): number[] {
    const desc = (BigInt(hi & 0x3fffffff) << 32n) | BigInt(lo >>> 0);
    const host = Number(desc & ((1n << this.csizeShift) - 1n));
    const sectors = Number(desc >> this.csizeShift) + 1;
    const start = host - (host % 512);
    const end = start + sectors * 512;
    const cs = this.cs;
    if (host < cs || host >= this.file.size) this.fail(`compressed cluster at ${hex(host)} (guest offset ${hex(guest)}) lies outside the file`);
    const out: number[] = [];
    for (let c = Math.floor(start / cs); c <= Math.floor((end - 1) / cs); c++) {
      if (this.metadata.has(c)) this.fail(`compressed cluster at ${hex(host)} (guest offset ${hex(guest)}) overlaps qcow2 metadata`);
      out.push(c);
    }
    return out;
  }

  /** Mark every metadata cluster in a bitmap of referenced clusters. */
  markMetadata(set: (c: number) => void): void {
    for (const c of this.metadata) set(c);
  }
}
