/**
 * qcow2 refcounts for in-place discard (qemu docs/interop/qcow2.rst, "Host cluster management"):
 * the refcount table points to refcount blocks of one cluster each, holding `refcount_bits`-wide
 * entries (big-endian for 16/32/64 bits; below 8 bits, packed least significant bits first).
 * Blocks are read on demand, changed in memory and written back by `flush`.
 */
import type { BlockFile } from '../../io/file.js';
import { CorruptError, hex } from '../../io/errors.js';
import type { Qcow2Header } from './header.js';

export class Qcow2Refcounts {
  private readonly bits: number;
  /** Refcount entries per refcount block. */
  readonly perBlock: number;
  private readonly cache = new Map<number, Buffer>();
  private readonly dirty = new Set<number>();
  private readonly max: number;

  private constructor(
    private readonly file: BlockFile,
    private readonly h: Qcow2Header,
    private readonly table: Buffer,
  ) {
    this.bits = 2 ** h.refcountOrder;
    this.perBlock = (h.clusterSize * 8) / this.bits;
    this.max = this.bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** this.bits - 1;
  }

  static async load(file: BlockFile, h: Qcow2Header): Promise<Qcow2Refcounts> {
    const table = Buffer.alloc(h.refcountTableClusters * h.clusterSize);
    await file.readExact(table, h.refcountTableOffset, 'qcow2 refcount table');
    return new Qcow2Refcounts(file, h, table);
  }

  private fail(msg: string): never {
    throw new CorruptError(`${this.file.path}: qcow2: ${msg}`);
  }

  get tableEntries(): number {
    return this.table.length / 8;
  }

  /** Host offset of refcount block `i`, or 0 when that block does not exist (all refcounts 0). */
  blockOffset(i: number): number {
    if (i >= this.tableEntries) return 0;
    const hi = this.table.readUInt32BE(i * 8);
    const lo = this.table.readUInt32BE(i * 8 + 4);
    if (hi > 0x1fffff) this.fail(`refcount table entry ${i} (${hex((BigInt(hi) << 32n) | BigInt(lo))}) is out of range`);
    const off = hi * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
    if (off === 0) return 0;
    const cs = this.h.clusterSize;
    if (off % cs !== 0) this.fail(`refcount block ${i} at ${hex(off)} is not aligned to the cluster size`);
    if (off < cs) this.fail(`refcount block ${i} at ${hex(off)} overlaps the image header`);
    if (off + cs > this.file.size) this.fail(`refcount block ${i} at ${hex(off)} lies beyond end of file (size ${hex(this.file.size)})`);
    return off;
  }

  private async block(i: number): Promise<Buffer | undefined> {
    const cached = this.cache.get(i);
    if (cached) return cached;
    const off = this.blockOffset(i);
    if (off === 0) return undefined;
    const buf = Buffer.allocUnsafe(this.h.clusterSize);
    await this.file.readExact(buf, off, `qcow2 refcount block ${i}`);
    this.cache.set(i, buf);
    return buf;
  }

  /** Refcount of host cluster `cluster` (0 when no refcount block covers it). */
  async get(cluster: number): Promise<number> {
    const b = await this.block(Math.floor(cluster / this.perBlock));
    return b ? this.read(b, cluster % this.perBlock) : 0;
  }

  /** Set the refcount of a host cluster whose refcount block exists (never allocates a block). */
  async set(cluster: number, value: number): Promise<void> {
    const i = Math.floor(cluster / this.perBlock);
    const b = await this.block(i);
    if (!b) this.fail(`no refcount block covers cluster at ${hex(cluster * this.h.clusterSize)}`);
    if (value < 0 || value > this.max) this.fail(`refcount ${value} does not fit in ${this.bits} bits`);
    this.write(b, cluster % this.perBlock, value);
    this.dirty.add(i);
  }

  private read(b: Buffer, idx: number): number {
    switch (this.bits) {
      case 64: {
        const v = b.readBigUInt64BE(idx * 8);
        if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`refcount ${v} is out of range`);
        return Number(v);
      }
      case 32:
        return b.readUInt32BE(idx * 4);
      case 16:
        return b.readUInt16BE(idx * 2);
      case 8:
        return b[idx]!;
      default: {
        const per = 8 / this.bits;
        const shift = (idx % per) * this.bits;
        return (b[Math.floor(idx / per)]! >> shift) & ((1 << this.bits) - 1);
      }
    }
  }

  private write(b: Buffer, idx: number, v: number): void {
    switch (this.bits) {
      case 64:
        b.writeBigUInt64BE(BigInt(v), idx * 8);
        return;
      case 32:
        b.writeUInt32BE(v, idx * 4);
        return;
      case 16:
        b.writeUInt16BE(v, idx * 2);
        return;
      case 8:
        b[idx] = v;
        return;
      default: {
        const per = 8 / this.bits;
        const shift = (idx % per) * this.bits;
        const mask = ((1 << this.bits) - 1) << shift;
        const at = Math.floor(idx / per);
        b[at] = (b[at]! & ~mask) | (v << shift);
      }
    }
  }

  /** Write every changed refcount block back and make it durable. */
  async flush(): Promise<void> {
    if (this.dirty.size === 0) return;
    for (const i of [...this.dirty].sort((a, b) => a - b)) await this.file.write(this.cache.get(i)!, this.blockOffset(i));
    this.dirty.clear();
    await this.file.sync();
  }

  /**
   * Point refcount table entry `i` at `offset` (a copy of the block, or 0 to drop a block whose
   * refcounts are all 0) and write the entry; the caller syncs. The cached block stays valid.
   */
  async setTableEntry(i: number, offset: number): Promise<void> {
    const e = Buffer.alloc(8);
    e.writeBigUInt64BE(BigInt(offset));
    e.copy(this.table, i * 8);
    await this.file.write(e, this.h.refcountTableOffset + i * 8);
    if (offset === 0) {
      this.cache.delete(i);
      this.dirty.delete(i);
    }
  }

  /** The refcount table's bytes (in memory), to copy it elsewhere. */
  tableBytes(): Buffer {
    return this.table;
  }

  /** The current bytes of refcount block `i` (which must exist), flushed or not. */
  async blockBytes(i: number): Promise<Buffer> {
    const b = await this.block(i);
    if (!b) this.fail(`refcount block ${i} vanished`);
    return b;
  }

  /** Does a refcount block cover host cluster `c` (so its refcount can be set without allocating)? */
  covers(c: number): boolean {
    return this.blockOffset(Math.floor(c / this.perBlock)) !== 0;
  }

  /** Forget cached blocks (after a flush) so memory stays bounded across batches. */
  dropCache(): void {
    if (this.dirty.size) throw new Error('qcow2 refcounts: dropping unflushed refcount blocks');
    this.cache.clear();
  }

  /** Clusters covered by refcount blocks that exist, as [first cluster, count) per block (for scans). */
  *coveredBlocks(): Generator<{ index: number; first: number }> {
    for (let i = 0; i < this.tableEntries; i++) if (this.blockOffset(i) !== 0) yield { index: i, first: i * this.perBlock };
  }

  /** Every refcount of block `i` (which must exist), for scans. */
  async blockValues(i: number): Promise<(idx: number) => number> {
    const b = await this.block(i);
    if (!b) this.fail(`refcount block ${i} vanished`);
    return (idx) => this.read(b, idx);
  }
}
