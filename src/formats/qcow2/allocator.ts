/**
 * Host space for a qcow2 image written front to back: hands out clusters (and byte ranges for
 * compressed data) in ascending order and keeps their refcounts.
 *
 * Refcount blocks are placed in the stream as it grows: when allocation reaches a cluster whose
 * refcount block does not exist yet, that block takes the cluster (it then counts itself). A block
 * is written out as soon as allocation has moved past the clusters it covers, so only one or two
 * blocks are ever in memory; only the refcount table (8 bytes per block) grows with the image.
 */
export interface RefcountLayout {
  tableOffset: number;
  tableClusters: number;
  /** End of the image: every allocated cluster lies below it. */
  fileEnd: number;
}

export class HostAllocator {
  readonly clusterSize: number;
  /** Refcount entries per refcount block. */
  private readonly perBlock: number;
  private readonly bits: number;
  /** Highest refcount one entry can hold (capped: we never need more than a cluster's worth of sharers). */
  readonly maxRefcount: number;
  /** Clusters [0, frontier) are allocated. */
  private frontier = 0;
  /** Next free byte for compressed data; between (frontier - 1) * cs and frontier * cs. */
  private bytePos = 0;
  /** Host offset of each refcount block, by block index (0 = not placed yet). */
  private readonly blockOffsets: number[] = [];
  /** Refcount blocks not yet written, by block index. */
  private readonly blocks = new Map<number, Buffer>();

  constructor(
    private readonly cs: number,
    refcountOrder: number,
    /** Writes through the writer's own path, so buffered data and direct writes stay ordered. */
    private readonly writeAt: (buf: Buffer, offset: number) => Promise<void>,
  ) {
    this.clusterSize = cs;
    this.bits = 2 ** refcountOrder;
    this.perBlock = (cs * 8) / this.bits;
    this.maxRefcount = Math.min(2 ** this.bits - 1, 0xffff);
  }

  /** The header occupies cluster 0. Call once, first. */
  reserveHeader(): void {
    this.frontier = 1;
    this.bytePos = this.cs;
    this.ensureBlockAtFrontier();
    this.set(0, 1);
  }

  get end(): number {
    return this.frontier * this.cs;
  }

  /** Allocate `n` contiguous clusters (refcount 1); returns the host offset of the first. */
  async allocClusters(n: number): Promise<number> {
    // Place every refcount block this range will need before the range itself, so it stays contiguous.
    for (;;) {
      this.ensureBlockAtFrontier();
      const first = this.block(this.frontier);
      const last = this.block(this.frontier + n - 1);
      let missing = -1;
      for (let b = first + 1; b <= last; b++) {
        if (!this.blockOffsets[b]) {
          missing = b;
          break;
        }
      }
      if (missing < 0) break;
      this.placeBlock(missing, this.frontier);
      this.frontier++;
    }
    const start = this.frontier;
    for (let c = start; c < start + n; c++) this.set(c, 1);
    this.frontier += n;
    this.bytePos = this.frontier * this.cs;
    await this.flushCompleted();
    return start * this.cs;
  }

  /**
   * Allocate `len` bytes for compressed data, packed after the previous compressed data. Every
   * cluster the bytes touch gets one more reference, as qemu counts them.
   */
  async allocBytes(len: number): Promise<number> {
    const cs = this.cs;
    let start = this.bytePos;
    for (let guard = 0; ; guard++) {
      if (guard > 64) throw new Error('qcow2 allocator: cannot place compressed data');
      // The partly used cluster cannot take another reference: start on a fresh cluster.
      if (start < this.frontier * cs && this.get(Math.floor(start / cs)) >= this.maxRefcount) start = this.frontier * cs;
      if (start === this.frontier * cs) {
        this.ensureBlockAtFrontier();
        start = this.frontier * cs;
      }
      const lastCluster = Math.floor((start + len - 1) / cs);
      let missing = -1;
      for (let b = this.block(this.frontier); b <= this.block(lastCluster); b++) {
        if (!this.blockOffsets[b]) {
          missing = b;
          break;
        }
      }
      if (missing < 0) break;
      // A new refcount block must come first; the data moves behind it.
      this.placeBlock(missing, this.frontier);
      this.frontier++;
      start = this.frontier * cs;
    }
    const first = Math.floor(start / cs);
    const last = Math.floor((start + len - 1) / cs);
    for (let c = first; c <= last; c++) this.set(c, this.get(c) + 1);
    this.frontier = Math.max(this.frontier, last + 1);
    this.bytePos = start + len;
    await this.flushCompleted();
    return start;
  }

  /** Allocate and write the refcount table and the remaining blocks. */
  async finish(): Promise<RefcountLayout> {
    const cs = this.cs;
    // Size the table for the blocks it will need once it (and blocks it causes) are allocated.
    let tableClusters = 1;
    for (;;) {
      const clustersAfter = this.frontier + tableClusters + Math.ceil(tableClusters / this.perBlock) + 2;
      if (Math.ceil(clustersAfter / this.perBlock) * 8 <= tableClusters * cs) break;
      tableClusters++;
    }
    const tableOffset = await this.allocClusters(tableClusters);
    for (const b of [...this.blocks.keys()].sort((x, y) => x - y)) await this.writeBlock(b);
    const table = Buffer.alloc(tableClusters * cs);
    this.blockOffsets.forEach((off, b) => {
      if (off) table.writeBigUInt64BE(BigInt(off), b * 8);
    });
    await this.writeAt(table, tableOffset);
    return { tableOffset, tableClusters, fileEnd: this.frontier * cs };
  }

  private block(cluster: number): number {
    return Math.floor(cluster / this.perBlock);
  }

  /** Invariant: the cluster at the frontier has its refcount block placed. */
  private ensureBlockAtFrontier(): void {
    const b = this.block(this.frontier);
    if (!this.blockOffsets[b]) {
      this.placeBlock(b, this.frontier);
      this.frontier++;
      this.bytePos = this.frontier * this.cs;
    }
  }

  private placeBlock(b: number, cluster: number): void {
    this.blockOffsets[b] = cluster * this.cs;
    this.set(cluster, 1);
  }

  private buf(b: number): Buffer {
    let buf = this.blocks.get(b);
    if (!buf) {
      if (!this.blockOffsets[b]) throw new Error(`qcow2 allocator: refcount block ${b} used before placement`);
      buf = Buffer.alloc(this.cs);
      this.blocks.set(b, buf);
    }
    return buf;
  }

  private get(cluster: number): number {
    const b = this.block(cluster);
    const buf = this.blocks.get(b);
    if (!buf) return 0;
    return readEntry(buf, cluster % this.perBlock, this.bits);
  }

  private set(cluster: number, value: number): void {
    writeEntry(this.buf(this.block(cluster)), cluster % this.perBlock, this.bits, value);
  }

  /** Blocks wholly below the partly used cluster can get no more references: write them. */
  private async flushCompleted(): Promise<void> {
    const active = this.block(Math.max(0, Math.floor((this.bytePos - 1) / this.cs)));
    for (const b of [...this.blocks.keys()]) if (b < active) await this.writeBlock(b);
  }

  private async writeBlock(b: number): Promise<void> {
    const buf = this.blocks.get(b);
    if (!buf) return;
    this.blocks.delete(b);
    await this.writeAt(buf, this.blockOffsets[b]!);
  }
}

/** Refcount entries narrower than a byte start at the least significant bit; wider ones are big-endian. */
function readEntry(buf: Buffer, i: number, bits: number): number {
  switch (bits) {
    case 8:
      return buf[i]!;
    case 16:
      return buf.readUInt16BE(i * 2);
    case 32:
      return buf.readUInt32BE(i * 4);
    case 64:
      return buf.readUInt32BE(i * 8 + 4);
    default: {
      const bit = i * bits;
      return (buf[bit >> 3]! >> (bit & 7)) & ((1 << bits) - 1);
    }
  }
}

function writeEntry(buf: Buffer, i: number, bits: number, v: number): void {
  switch (bits) {
    case 8:
      buf[i] = v;
      return;
    case 16:
      buf.writeUInt16BE(v, i * 2);
      return;
    case 32:
      buf.writeUInt32BE(v, i * 4);
      return;
    case 64:
      buf.writeUInt32BE(0, i * 8);
      buf.writeUInt32BE(v, i * 8 + 4);
      return;
    default: {
      const bit = i * bits;
      const mask = ((1 << bits) - 1) << (bit & 7);
      buf[bit >> 3] = (buf[bit >> 3]! & ~mask) | ((v << (bit & 7)) & mask);
    }
  }
}
