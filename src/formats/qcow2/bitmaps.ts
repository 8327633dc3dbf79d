/**
 * Persistent dirty bitmaps of a qcow2 image (qcow2 spec, "Bitmaps"), as in-place mode must keep
 * them: the incremental backups of oVirt, libvirt and Proxmox copy what an enabled ("auto")
 * bitmap marks, so every guest range sparsify changes (discards) or moves must be marked dirty in
 * each enabled bitmap BEFORE the change is made durable. Bits only ever go from 0 to 1, so a
 * torn or partial write of a bitmap cluster is still correct.
 *
 * On disk: a header extension (nb_bitmaps, directory size and offset), a directory of entries
 * (table offset and size, flags: bit 0 in_use, bit 1 auto; type 1; granularity bits; name), and
 * per bitmap a table of u64 entries: bits 9-55 a data cluster, or 0 with bit 0 saying all zeros
 * (0) or all ones (1). Bit k of the bitmap is byte k/8, bit k%8 (least significant first) of the
 * data, and covers guest bytes [k * granularity, (k+1) * granularity).
 * The extension only counts while the header's autoclear bit 0 is set; without it qemu ignores
 * the bitmaps, and so do we.
 */
import type { BlockFile } from '../../io/file.js';
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';
import type { Extents } from '../../io/extents.js';
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS, EXT_END, type Qcow2Header } from './header.js';
import type { Qcow2Refcounts } from './discard-refcount.js';

const FLAG_IN_USE = 1;
const FLAG_AUTO = 2;
const FLAG_EXTRA_COMPATIBLE = 4;
const TYPE_DIRTY_TRACKING = 1;
/** qemu's limits (block/qcow2-bitmap.c): they also bound our memory. */
const MAX_BITMAPS = 65535;
const MAX_DIRECTORY_BYTES = 64 << 20;
const MAX_TABLE_ENTRIES = 0x8000000;
const ALL_ONES = 1n;

export interface Bitmap {
  name: string;
  flags: number;
  granularityBits: number;
  /** Byte offset of this bitmap's entry inside the directory. */
  entryAt: number;
  tableOffset: number;
  /** Table entries: host offset of a data cluster, or 0n (all zeros) / 1n (all ones). */
  table: bigint[];
}

/** Where to put a new bitmap data cluster: a free host cluster, or undefined when there is none. */
export interface ClusterSource {
  take(): Promise<number | undefined>;
}

export class Qcow2Bitmaps {
  private warnedFull = false;

  private constructor(
    private readonly file: BlockFile,
    private readonly h: Qcow2Header,
    /** File offset of the extension's data (nb_bitmaps) inside the header cluster. */
    private readonly extAt: number,
    public directoryOffset: number,
    private readonly directory: Buffer,
    readonly bitmaps: Bitmap[],
  ) {}

  /** The bitmaps in force, or undefined when the image has none (or qemu would ignore them). */
  static async load(file: BlockFile, h: Qcow2Header, warn: (m: string) => void): Promise<Qcow2Bitmaps | undefined> {
    if (!h.hasBitmaps) return undefined;
    const p = file.path;
    const fail = (m: string): never => {
      throw new CorruptError(`${p}: qcow2 bitmaps: ${m}`);
    };
    if ((h.autoclear & AUTOCLEAR_BITMAPS) === 0n) {
      warn(`${p}: the qcow2 bitmaps extension is marked inconsistent (autoclear bit 0 clear), as qemu ignores it so does sparsify`);
      return undefined;
    }
    const head = Buffer.alloc(Math.min(h.clusterSize, file.size));
    await file.readExact(head, 0, 'qcow2 header cluster');
    let extAt = -1;
    for (let off = h.headerLength; off + 8 <= head.length; ) {
      const type = head.readUInt32BE(off);
      const len = head.readUInt32BE(off + 4);
      if (type === EXT_END) break;
      if (type === EXT_BITMAPS) {
        if (len < 24) fail(`extension at ${hex(off)} is ${len} bytes long (24 expected)`);
        extAt = off + 8;
        break;
      }
      off += 8 + Math.ceil(len / 8) * 8;
    }
    if (extAt < 0) fail('the header says bitmaps but has no bitmaps extension');
    const count = head.readUInt32BE(extAt);
    const dirSize = Number(head.readBigUInt64BE(extAt + 8));
    const dirOffset = Number(head.readBigUInt64BE(extAt + 16));
    if (count === 0 || count > MAX_BITMAPS) fail(`nb_bitmaps ${count} is out of range`);
    if (dirSize === 0 || dirSize > MAX_DIRECTORY_BYTES) fail(`directory size ${dirSize} is out of range`);
    if (dirOffset % h.clusterSize !== 0 || dirOffset < h.clusterSize || dirOffset + dirSize > file.size) {
      fail(`directory at ${hex(dirOffset)} (+${dirSize}) is misaligned or beyond end of file (size ${hex(file.size)})`);
    }
    const dir = Buffer.alloc(dirSize);
    await file.readExact(dir, dirOffset, 'qcow2 bitmap directory');
    const bitmaps: Bitmap[] = [];
    let at = 0;
    for (let i = 0; i < count; i++) {
      if (at + 24 > dirSize) fail(`directory entry ${i} at ${hex(dirOffset + at)} runs past the directory`);
      const tableOffset = Number(dir.readBigUInt64BE(at));
      const tableSize = dir.readUInt32BE(at + 8);
      const flags = dir.readUInt32BE(at + 12);
      const type = dir[at + 16]!;
      const granularityBits = dir[at + 17]!;
      const nameSize = dir.readUInt16BE(at + 18);
      const extra = dir.readUInt32BE(at + 20);
      const entryLen = Math.ceil((24 + extra + nameSize) / 8) * 8;
      if (at + entryLen > dirSize) fail(`directory entry ${i} at ${hex(dirOffset + at)} runs past the directory`);
      const name = dir.toString('utf8', at + 24 + extra, at + 24 + extra + nameSize);
      const where = `bitmap '${name}'`;
      if (type !== TYPE_DIRTY_TRACKING) throw new SparsifyError(`${p}: qcow2 ${where} has type ${type}, which in-place mode cannot keep up to date; use copy mode`);
      if (flags & ~(FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_COMPATIBLE)) throw new SparsifyError(`${p}: qcow2 ${where} has unknown flags ${hex(flags)}; use copy mode`);
      if (extra && !(flags & FLAG_EXTRA_COMPATIBLE)) throw new SparsifyError(`${p}: qcow2 ${where} has extra data qemu would not use it with; use copy mode`);
      if (granularityBits < 9 || granularityBits > 31) fail(`${where}: granularity bits ${granularityBits} out of range (9..31)`);
      const bits = Math.ceil(h.virtualSize / 2 ** granularityBits);
      const want = Math.ceil(Math.ceil(bits / 8) / h.clusterSize);
      if (tableSize !== want || tableSize > MAX_TABLE_ENTRIES) fail(`${where}: table of ${tableSize} entries, ${want} expected for the virtual size`);
      if (tableOffset % h.clusterSize !== 0 || tableOffset < h.clusterSize || tableOffset + tableSize * 8 > file.size) {
        fail(`${where}: table at ${hex(tableOffset)} is misaligned or beyond end of file`);
      }
      const raw = Buffer.alloc(tableSize * 8);
      await file.readExact(raw, tableOffset, `qcow2 ${where} table`);
      const table: bigint[] = [];
      for (let j = 0; j < tableSize; j++) {
        const e = raw.readBigUInt64BE(j * 8);
        const off = Number(e & 0x00fffffffffffe00n);
        if (off === 0) {
          if (e & ~ALL_ONES) fail(`${where}: table entry ${j} has reserved bits set`);
          table.push(e);
          continue;
        }
        if (e & 0xff000000000001ffn) fail(`${where}: table entry ${j} has reserved bits set`);
        if (off % h.clusterSize !== 0 || off + h.clusterSize > file.size) fail(`${where}: data cluster ${j} at ${hex(off)} is misaligned or beyond end of file`);
        table.push(BigInt(off));
      }
      if (flags & FLAG_IN_USE) warn(`${p}: qcow2 bitmap '${name}' is marked in use (not saved cleanly), so it is already inconsistent; it is left as it is`);
      bitmaps.push({ name, flags, granularityBits, entryAt: at, tableOffset, table });
      at += entryLen;
    }
    return new Qcow2Bitmaps(file, h, extAt, dirOffset, dir, bitmaps);
  }

  /** Bitmaps whose bits must follow every change: enabled (auto) and consistent (not in use). */
  private get tracking(): Bitmap[] {
    return this.bitmaps.filter((b) => (b.flags & FLAG_AUTO) !== 0 && (b.flags & FLAG_IN_USE) === 0);
  }

  get hasTracking(): boolean {
    return this.tracking.length > 0;
  }

  get directorySize(): number {
    return this.directory.length;
  }

  /** Every host range the bitmaps occupy, for the metadata set and leak scans. */
  *hostRanges(): Generator<{ offset: number; length: number }> {
    yield { offset: this.directoryOffset, length: this.directory.length };
    for (const b of this.bitmaps) {
      yield { offset: b.tableOffset, length: b.table.length * 8 };
      for (const e of b.table) if (e > ALL_ONES) yield { offset: Number(e), length: this.h.clusterSize };
    }
  }

  /**
   * Mark guest ranges dirty in every tracking bitmap and make that durable. New data clusters come
   * from `source` (their refcounts set to 1 and flushed before anything points at them); where it
   * has none, the table entry says "all ones" instead, which is coarser but still correct.
   * Returns the host clusters it allocated.
   */
  async markDirty(ranges: Extents, refcounts: Qcow2Refcounts, source: ClusterSource, warn: (m: string) => void): Promise<number[]> {
    if (ranges.isEmpty) return [];
    const cs = this.h.clusterSize;
    const bitsPerCluster = cs * 8;
    const allocated: number[] = [];
    /** Data clusters to write: bitmap index, table index -> contents. */
    const writes = new Map<string, { b: Bitmap; j: number; data: Buffer; fresh: boolean }>();
    const entryChanges: Array<{ b: Bitmap; j: number; value: bigint }> = [];
    for (const b of this.tracking) {
      const g = 2 ** b.granularityBits;
      const nbits = Math.ceil(this.h.virtualSize / g);
      for (const r of ranges) {
        const first = Math.floor(r.start / g);
        const last = Math.min(nbits, Math.ceil(r.end / g)) - 1;
        for (let bit = first; bit <= last; ) {
          const j = Math.floor(bit / bitsPerCluster);
          const stop = Math.min(last, (j + 1) * bitsPerCluster - 1);
          const e = b.table[j]!;
          if (e === ALL_ONES) {
            bit = stop + 1;
            continue;
          }
          const key = `${b.entryAt}:${j}`;
          let w = writes.get(key);
          if (!w) {
            if (e === 0n) {
              const c = await source.take();
              if (c === undefined) {
                if (!this.warnedFull) warn('no free cluster for a bitmap data cluster: its whole range is marked dirty instead');
                this.warnedFull = true;
                b.table[j] = ALL_ONES;
                entryChanges.push({ b, j, value: ALL_ONES });
                bit = stop + 1;
                continue;
              }
              allocated.push(c);
              w = { b, j, data: Buffer.alloc(cs), fresh: true };
              b.table[j] = BigInt(c * cs);
              entryChanges.push({ b, j, value: BigInt(c * cs) });
            } else {
              const data = Buffer.alloc(cs);
              await this.file.readExact(data, Number(e), `qcow2 bitmap '${b.name}' data cluster`);
              w = { b, j, data, fresh: false };
            }
            writes.set(key, w);
          }
          for (let k = bit; k <= stop; k++) {
            const at = k - j * bitsPerCluster;
            w.data[at >> 3]! |= 1 << (at & 7);
          }
          bit = stop + 1;
        }
      }
    }
    if (writes.size === 0 && entryChanges.length === 0) return allocated;
    // 1. New clusters are counted before anything points at them.
    for (const c of allocated) await refcounts.set(c, 1);
    await refcounts.flush();
    // 2. The bits.
    for (const w of writes.values()) await this.file.write(w.data, Number(w.b.table[w.j]!));
    await this.file.sync();
    // 3. Table entries of new clusters and of ranges marked whole.
    for (const ch of entryChanges) await this.writeTableEntry(ch.b, ch.j, ch.value);
    if (entryChanges.length) await this.file.sync();
    return allocated;
  }

  private async writeTableEntry(b: Bitmap, j: number, value: bigint): Promise<void> {
    const e = Buffer.alloc(8);
    e.writeBigUInt64BE(value);
    await this.file.write(e, b.tableOffset + j * 8);
  }

  // --- moves, for compaction: the caller copies the bytes and syncs around each pointer change ---

  /** The directory's bytes (to copy them elsewhere). */
  directoryBytes(): Buffer {
    return this.directory;
  }

  /** Point the header extension at a copy of the directory at `offset` (the caller syncs). */
  async pointAtDirectory(offset: number): Promise<void> {
    const e = Buffer.alloc(8);
    e.writeBigUInt64BE(BigInt(offset));
    await this.file.write(e, this.extAt + 16);
    this.directoryOffset = offset;
  }

  /** A bitmap table's bytes as they are now. */
  tableBytes(b: Bitmap): Buffer {
    const out = Buffer.alloc(b.table.length * 8);
    b.table.forEach((e, j) => out.writeBigUInt64BE(e, j * 8));
    return out;
  }

  /** Point the directory entry of `b` at a copy of its table at `offset` (the caller syncs). */
  async pointAtTable(b: Bitmap, offset: number): Promise<void> {
    const e = Buffer.alloc(8);
    e.writeBigUInt64BE(BigInt(offset));
    e.copy(this.directory, b.entryAt);
    await this.file.write(e, this.directoryOffset + b.entryAt);
    b.tableOffset = offset;
  }

  /** Point table entry `j` of `b` at a copy of its data cluster at `offset` (the caller syncs). */
  async pointAtData(b: Bitmap, j: number, offset: number): Promise<void> {
    b.table[j] = BigInt(offset);
    await this.writeTableEntry(b, j, BigInt(offset));
  }
}
