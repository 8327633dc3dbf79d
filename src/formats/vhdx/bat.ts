/**
 * The BAT in memory, as the in-place updater changes it. Entries are u64 little-endian: bits 0-2
 * the state, bits 20-63 the file offset in MiB; a sector-bitmap entry follows every `ratio`
 * payload entries. Changes are collected by 4 KiB BAT sector, the unit the log carries.
 */
import { LOG_SECTOR } from './log-format.js';

export class VhdxBat {
  /** The BAT's sectors (whole 4 KiB sectors covering every entry), as the file holds them now. */
  private readonly sectors: Buffer;
  private readonly dirty = new Set<number>();
  /** Entries (payload and sector bitmap). */
  readonly count: number;

  constructor(
    /** File offset of the BAT region. */
    readonly offset: number,
    entriesRaw: Buffer,
    /** Payload entries per sector-bitmap entry. */
    readonly ratio: number,
    /** Bytes the region holds beyond the entries (the rest of their last sector), as on disk. */
    sectorTail: Buffer,
  ) {
    this.count = entriesRaw.length / 8;
    this.sectors = Buffer.concat([entriesRaw, sectorTail]);
    if (this.sectors.length % LOG_SECTOR !== 0) throw new Error('vhdx BAT: not whole sectors');
  }

  /** The BAT entry of payload block `block`. */
  entryOf(block: number): number {
    return block + Math.floor(block / this.ratio);
  }

  state(e: number): number {
    return this.sectors.readUInt32LE(e * 8) & 7;
  }

  /** File offset the entry holds (0 for none). */
  host(e: number): number {
    const lo = this.sectors.readUInt32LE(e * 8);
    const hi = this.sectors.readUInt32LE(e * 8 + 4);
    return ((lo >>> 20) + hi * 4096) * 2 ** 20;
  }

  /** Set an entry to `state` at `host` (a MiB multiple, or 0); reserved bits become zero. */
  set(e: number, state: number, host: number): void {
    const mib = host / 2 ** 20;
    this.sectors.writeUInt32LE((((mib % 4096) << 20) | state) >>> 0, e * 8);
    this.sectors.writeUInt32LE(Math.floor(mib / 4096), e * 8 + 4);
    this.dirty.add(Math.floor((e * 8) / LOG_SECTOR));
  }

  get dirtySectors(): number {
    return this.dirty.size;
  }

  /** The changed sectors by file offset (copies), and forget them. */
  takeDirty(): Map<number, Buffer> {
    const out = new Map<number, Buffer>();
    for (const s of [...this.dirty].sort((a, b) => a - b)) {
      out.set(this.offset + s * LOG_SECTOR, Buffer.from(this.sectors.subarray(s * LOG_SECTOR, (s + 1) * LOG_SECTOR)));
    }
    this.dirty.clear();
    return out;
  }
}
