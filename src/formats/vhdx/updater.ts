/**
 * The in-place view of a VHDX file, shared by discard and compaction: the BAT in memory, what
 * host space is used (payload blocks, sector bitmaps, the header section, log, BAT, metadata and
 * any other region) and the write session through the log.
 *
 * Safety rules kept here:
 * - Nothing is written until the first change: a log left by a power cut is replayed in memory
 *   at open (layout.ts) and put on disk only then, right after a header update with a new
 *   FileWriteGuid (the log GUID kept, so a cut during the replay replays again).
 * - BAT sectors change only through the log (log-writer.ts). Each phase ends with the log retired
 *   (zero log GUID), so the image it leaves needs no replay.
 * - Host space is released only once no durable BAT entry points at it.
 * - The image is refused before anything is written when its map cannot be trusted: an entry in
 *   an invalid state, a block outside the file or over a region, two blocks sharing space.
 */
import type { BlockFile } from '../../io/file.js';
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';
import { Extents } from '../../io/extents.js';
import { loadVhdx, type VhdxLayout } from './layout.js';
import { VhdxBat } from './bat.js';
import { LOG_SECTOR } from './log-format.js';
import { VhdxLogWriter } from './log-writer.js';
import { PAYLOAD_FULLY_PRESENT, PAYLOAD_UNDEFINED, PAYLOAD_UNMAPPED, PAYLOAD_ZERO } from './image.js';
import { MiB } from './structures.js';
import { logRegion, type PendingLog } from './log-replay.js';
import { releaseData, writeZeroRange } from './host-space.js';

/** Sector bitmap entry state for a present bitmap block (1 MiB). */
const SB_BLOCK_PRESENT = 6;

export class VhdxUpdater {
  private pending: PendingLog | undefined;
  /** The DataWriteGuid got its new value in this run (before the first guest-visible change). */
  private dataGuidNew = false;

  private constructor(
    readonly file: BlockFile,
    readonly layout: VhdxLayout,
    readonly bat: VhdxBat,
    readonly log: VhdxLogWriter,
  ) {
    this.pending = layout.pending;
  }

  static async open(file: BlockFile): Promise<VhdxUpdater> {
    if (!file.writable) throw new Error(`${file.path}: vhdx in-place update needs the image opened for writing`);
    const l = await loadVhdx(file, { replayInMemory: true });
    const h = l.header;
    const where = `vhdx: ${file.path}`;
    if (h.logLength < MiB) throw new SparsifyError(`${where}: the image has no log (header at ${hex(h.at)}), which in-place updates need; use copy mode`);
    const log = logRegion(file, h);
    for (const r of [l.regions.bat, l.regions.metadata, ...l.regions.others]) {
      if (r.offset < log.offset + log.length && log.offset < r.offset + r.length) {
        throw new CorruptError(`${where}: the log (${hex(log.offset)}+${hex(log.length)}) overlaps the region at ${hex(r.offset)}`);
      }
    }
    if (l.regions.bat.length % LOG_SECTOR !== 0) throw new CorruptError(`${where}: BAT region at ${hex(l.regions.bat.offset)} is ${l.regions.bat.length} bytes, not whole 4 KiB sectors`);
    const used = l.entries * 8;
    const tail = Buffer.alloc(Math.ceil(used / LOG_SECTOR) * LOG_SECTOR - used);
    if (tail.length > 0) await l.src.read(tail, l.regions.bat.offset + used, 'vhdx BAT');
    const u = new VhdxUpdater(file, l, new VhdxBat(l.regions.bat.offset, l.bat, l.ratio, tail), new VhdxLogWriter(file, h));
    u.checkMap();
    return u;
  }

  get blockSize(): number {
    return this.layout.md.blockSize;
  }

  get virtualSize(): number {
    return this.layout.md.virtualSize;
  }

  /** The file's length once any pending replay is on disk. */
  get fileEnd(): number {
    return this.pending ? this.pending.overlay.size : this.file.size;
  }

  /** Is BAT entry `e` a sector-bitmap entry (after every `ratio` payload entries)? */
  private isBitmapEntry(e: number): boolean {
    return (e + 1) % (this.layout.ratio + 1) === 0;
  }

  /** Host space that never moves: the header section, the log and every region. */
  regions(): Extents {
    const l = this.layout;
    const r = [{ start: 0, end: MiB }, { start: l.header.logOffset, end: l.header.logOffset + l.header.logLength }];
    for (const g of [l.regions.bat, l.regions.metadata, ...l.regions.others]) r.push({ start: g.offset, end: g.offset + g.length });
    return new Extents(r).alignOutward(MiB);
  }

  /** The host slot a payload entry holds (FULLY_PRESENT), if any. */
  dataSlot(e: number): number | undefined {
    return this.bat.state(e) === PAYLOAD_FULLY_PRESENT ? this.bat.host(e) : undefined;
  }

  /**
   * Host space referenced by entries that do not move: sector bitmap blocks, and blocks in other
   * states that still carry an offset (kept, in case a reader uses them).
   */
  pinnedBlocks(): Extents {
    const r: Array<{ start: number; end: number }> = [];
    for (let e = 0; e < this.bat.count; e++) {
      const st = this.bat.state(e);
      const host = this.bat.host(e);
      if (host === 0) continue;
      if (this.isBitmapEntry(e)) {
        if (st === SB_BLOCK_PRESENT) r.push({ start: host, end: host + MiB });
      } else if (st === PAYLOAD_UNDEFINED || st === PAYLOAD_ZERO || st === PAYLOAD_UNMAPPED) {
        r.push({ start: host, end: host + this.blockSize });
      }
    }
    return new Extents(r);
  }

  /** Every host byte something needs: regions, data blocks, pinned blocks. */
  usedSpace(): Extents {
    const r: Array<{ start: number; end: number }> = [];
    for (let e = 0; e < this.bat.count; e++) {
      const h = this.isBitmapEntry(e) ? undefined : this.dataSlot(e);
      if (h !== undefined) r.push({ start: h, end: h + this.blockSize });
    }
    return this.regions().union(this.pinnedBlocks()).union(new Extents(r));
  }

  /** Refuse a map that cannot be changed safely (see the top). */
  private checkMap(): void {
    const where = `vhdx: ${this.file.path}`;
    const size = this.fileEnd;
    const claims: Array<{ start: number; end: number; e: number }> = [];
    for (let e = 0; e < this.bat.count; e++) {
      const st = this.bat.state(e);
      const host = this.bat.host(e);
      const at = hex(this.layout.regions.bat.offset + e * 8);
      if (this.isBitmapEntry(e)) {
        if (st === SB_BLOCK_PRESENT && host !== 0) claims.push({ start: host, end: host + MiB, e });
        continue;
      }
      if (st > PAYLOAD_UNMAPPED && st !== PAYLOAD_FULLY_PRESENT) {
        throw new CorruptError(`${where}: BAT entry ${e} at ${at} has state ${st}, invalid in a disk without a parent`);
      }
      if (st !== PAYLOAD_FULLY_PRESENT) continue;
      const block = e - Math.floor(e / (this.layout.ratio + 1));
      const len = Math.min(this.blockSize, this.virtualSize - block * this.blockSize);
      if (host < MiB || host + len > size) {
        throw new CorruptError(`${where}: BAT entry ${e} at ${at} points to ${hex(host)}, outside the file (size ${hex(size)})`);
      }
      claims.push({ start: host, end: host + this.blockSize, e });
    }
    const regions = this.regions();
    claims.sort((a, b) => a.start - b.start);
    for (let i = 0; i < claims.length; i++) {
      const c = claims[i]!;
      const prev = claims[i - 1];
      if (prev && prev.end > c.start) {
        throw new CorruptError(`${where}: BAT entries ${prev.e} and ${c.e} share host space at ${hex(c.start)}; in-place mode cannot change this map (copy mode can read it)`);
      }
      if (!regions.clip(c.start, Math.min(c.end, size)).isEmpty) {
        throw new CorruptError(`${where}: BAT entry ${c.e} points to ${hex(c.start)}, inside the header section, log, BAT or metadata region`);
      }
    }
  }

  /**
   * Put a pending log on disk: a header update first (new FileWriteGuid, log GUID kept), then the
   * replayed sectors, fdatasync. The caller then retires the log or starts its own.
   */
  private async replay(): Promise<void> {
    const p = this.pending;
    if (!p) return;
    const changes = p.entries.length > 0 && !this.dataGuidNew;
    await this.log.updateHeaders({ newDataWriteGuid: changes });
    this.dataGuidNew ||= changes;
    await p.overlay.writeTo(this.file);
    await this.file.sync();
    this.pending = undefined;
  }

  /** Before the first BAT change of a phase: replay what is pending, open a log session. */
  async begin(o: { dataChanges: boolean }): Promise<void> {
    if (this.log.active) return;
    await this.replay();
    await this.log.begin({ dataChanges: o.dataChanges && !this.dataGuidNew });
    this.dataGuidNew ||= o.dataChanges;
  }

  /** Before guest data is written outside the log: any pending log on disk, a new DataWriteGuid. */
  async dataWillChange(): Promise<void> {
    if (this.dataGuidNew && !this.pending) return;
    await this.replay();
    if (!this.dataGuidNew) await this.log.updateHeaders({ newDataWriteGuid: true });
    this.dataGuidNew = true;
  }

  /** Write the BAT sectors changed since the last commit through the log. */
  async commitBat(): Promise<void> {
    const dirty = this.bat.takeDirty();
    if (dirty.size > 0) await this.log.commit(dirty);
  }

  /** End a phase: the log retired, and a pending log (even an empty one) replayed and retired. */
  async finish(): Promise<void> {
    if (this.pending) await this.replay();
    if (this.log.active || this.log.logGuidSet) await this.log.end();
  }

  /**
   * Release the host space below `end` that nothing uses (freed blocks, space a power cut leaked),
   * past the header section. Only call once the BAT in memory is durable.
   */
  releaseFree(end: number): void {
    const free = Extents.of(MiB, Math.min(end, this.file.size)).subtract(this.usedSpace());
    for (const r of free) releaseData(this.file, r.start, r.end);
  }
}

/**
 * Write zeros over guest ranges, inside the blocks that hold data (the others read as zero
 * already), then fdatasync: the unaligned edges of --zero devices.
 */
export async function writeZerosInBlocks(u: VhdxUpdater, ranges: Extents): Promise<void> {
  const bs = u.blockSize;
  for (const r of ranges) {
    for (let pos = r.start; pos < r.end; ) {
      const i = Math.floor(pos / bs);
      const stop = Math.min(r.end, (i + 1) * bs);
      const host = u.dataSlot(u.bat.entryOf(i));
      if (host !== undefined) {
        const at = host + (pos - i * bs);
        if (at + (stop - pos) > u.file.size) throw new CorruptError(`vhdx: ${u.file.path}: block ${i} lies beyond end of file`);
        await u.dataWillChange();
        await writeZeroRange(u.file, at, stop - pos);
      }
      pos = stop;
    }
  }
  await u.file.sync();
}
