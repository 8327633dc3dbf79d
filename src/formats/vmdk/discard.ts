/**
 * In-place discard for monolithicSparse VMDK images (layout-discard.ts has the on-disk facts). A
 * grain wholly inside the discard ranges loses its data: its grain table entry becomes 0
 * (unallocated, reads as zero) in the GT and the RGT. A delta disk (a parent named in the
 * descriptor) must not start showing its parent's data there: its grains become zeroed grains
 * (entry 1) where the header has the zeroed-grain flag, and are kept, with one warning, where it
 * has not. Its unallocated grains keep showing the parent (free space the guest does not use),
 * except in --zero devices, which are marked zeroed where the flag allows.
 *
 * Work goes in batches of grain tables, each in the order that survives a power cut anywhere:
 *   1. GT and RGT entries written, fdatasync;
 *   2. the grains nobody points at any more released (hole, BLKDISCARD), when asked.
 * A cut leaves at worst a grain nobody points at, or an RGT entry behind its GT; the next run
 * rewrites such RGT entries from the GT first and ends by releasing every unreferenced grain
 * (release-discard.ts). Compaction (compact.ts) follows when asked.
 */
import { Extents } from '../../io/extents.js';
import {
  yieldToEventLoop,
  type DiscardBackend,
  type DiscardContext,
  type DiscardResult,
} from '../discard-types.js';
import type { DiskImage } from '../types.js';
import { SECTOR } from './header.js';
import { VmdkImage } from './image.js';
import { GTE_ZERO, VmdkLayout } from './layout-discard.js';
import { releaseUnreferenced } from './release-discard.js';
import { VmdkCompactor } from './compact.js';

/** Grain tables changed per batch (one fdatasync each). */
const TABLES_PER_BATCH = 32;
/** Grains freed per batch, to bound memory with small grains. */
const GRAINS_PER_BATCH = 1 << 16;

/** One grain table being changed: its entries on disk (GT, RGT) and as they will be. */
interface Table {
  before: Uint32Array;
  redundant: Uint32Array | undefined;
  after: Uint32Array;
}

interface Batch {
  tables: Map<number, Table>;
  /** [entry, host sector] of each grain given up. */
  freed: Array<[number, number]>;
  covered: number;
  discarded: number;
  kept: number;
}

function newBatch(): Batch {
  return { tables: new Map(), freed: [], covered: 0, discarded: 0, kept: 0 };
}

export async function openVmdkDiscarder(image: DiskImage): Promise<DiscardBackend> {
  if (!(image instanceof VmdkImage)) throw new Error(`${image.path}: vmdk image is not a VmdkImage`);
  const file = image.file;
  if (!file.writable) throw new Error(`${image.path}: vmdk in-place discard needs the image opened for writing`);
  const details = image.layers()[0]?.details;
  const kind = { subformat: String(details?.['subformat'] ?? ''), extents: Number(details?.['extents'] ?? 0) };
  const layout = await VmdkLayout.load(file, image.virtualSize, kind);
  return new VmdkDiscarder(layout, image.layers().length > 1);
}

export class VmdkDiscarder implements DiscardBackend {
  readonly compactor: VmdkCompactor;
  private deltaKept = 0;
  private zeroKept = 0;
  private mustZero = new Extents();
  private warn: (msg: string) => void = () => undefined;

  constructor(
    private readonly layout: VmdkLayout,
    private readonly hasParent: boolean,
  ) {
    this.compactor = new VmdkCompactor(layout);
  }

  get granularity(): number {
    return this.layout.grainBytes;
  }

  get description(): string {
    const l = this.layout;
    const mode = !this.hasParent ? 'unallocated grains' : l.zeroGrain ? 'zeroed grains (delta disk)' : 'kept (delta disk without the zeroed-grain flag)';
    return `vmdk monolithicSparse, ${l.grainBytes}-byte grains, discarded ranges become ${mode}`;
  }

  /** Whole grains; the last, short grain counts as whole when the range reaches the end of the disk. */
  align(ranges: Extents): Extents {
    const size = this.layout.virtualSize;
    const g = this.layout.grainBytes;
    const inward = ranges.clip(0, size).alignInward(g);
    const tailStart = Math.floor(size / g) * g;
    if (tailStart < size && ranges.clip(tailStart, size).total() === size - tailStart) return inward.union(Extents.of(tailStart, size));
    return inward;
  }

  canRelease(): Promise<boolean> {
    return this.layout.file.canRelease();
  }

  async discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
    this.warn = ctx.warn;
    this.mustZero = ctx.zero ?? new Extents();
    const l = this.layout;
    const span = l.perTable * l.grainBytes;
    let done = 0;
    let discarded = 0;
    let kept = 0;
    let batch = newBatch();
    const commit = async (): Promise<void> => {
      await this.commit(batch, ctx.release);
      done += batch.covered;
      discarded += batch.discarded;
      kept += batch.kept;
      ctx.onProgress(done);
      batch = newBatch();
    };
    const full = (): boolean => batch.tables.size >= TABLES_PER_BATCH || batch.freed.length >= GRAINS_PER_BATCH;
    const result = (aborted: boolean): DiscardResult => {
      if (this.deltaKept) {
        ctx.warn(`${this.deltaKept} bytes of free space kept: this delta VMDK has no zeroed-grain flag, so its grains cannot be marked as zero, and dropping them would show the parent disk's data`);
      }
      if (this.zeroKept) ctx.warn(`${this.zeroKept} bytes of --zero devices still read as the parent disk's data: this delta VMDK cannot mark them as zero there (copy mode writes them as zeros)`);
      return { discarded, kept, aborted };
    };

    // First, RGTs an interrupted run left behind their GT.
    for (const t of [...l.staleRedundant].sort((a, b) => a - b)) {
      if (!batch.tables.has(t)) batch.tables.set(t, await this.loadTable(t));
      if (full()) await commit();
    }
    for (const r of ranges) {
      let pos = r.start;
      while (pos < r.end) {
        if (ctx.signal?.aborted) {
          await commit();
          return result(true);
        }
        const t = Math.floor(pos / span);
        const end = Math.min(r.end, (t + 1) * span);
        await this.discardInTable(t, pos, end, batch);
        batch.covered += end - pos;
        pos = end;
        if (full()) await commit();
        else if (batch.tables.size === 0 && batch.covered >= 64 * span) {
          // Long stretches without tables: report progress and let signals in.
          await commit();
          await yieldToEventLoop();
        }
      }
    }
    await commit();
    if (ctx.signal?.aborted) return result(true);
    if (ctx.release) {
      const leaked = await releaseUnreferenced(l, l.floor, l.file.size);
      if (leaked && !l.file.isBlockDevice) ctx.warn(`gave back ${leaked} bytes of VMDK grain space nothing referenced (left by an interrupted run, or by the program that wrote the image)`);
    }
    return result(false);
  }

  private async loadTable(t: number): Promise<Table> {
    const before = await this.layout.readEntries(t);
    return { before, redundant: await this.layout.readRedundantEntries(t), after: before.slice() };
  }

  /** Plan the changes for guest range [start, end) inside the span of table `t`. */
  private async discardInTable(t: number, start: number, end: number, b: Batch): Promise<void> {
    const l = this.layout;
    // Only over a parent do unallocated grains need marking, and only in --zero devices.
    const zero = this.hasParent ? this.mustZero.clip(start, end) : new Extents();
    if (l.gt.dir[t] === 0) {
      // No table: reads as zero without a parent; with one, it shows the parent (not ours to discard).
      const z = zero.total();
      this.zeroKept += z;
      b.kept += z;
      if (!this.hasParent) b.discarded += end - start;
      return;
    }
    let table = b.tables.get(t);
    if (!table) {
      table = await this.loadTable(t);
      b.tables.set(t, table);
    }
    const first = t * l.perTable;
    for (let g = Math.floor(start / l.grainBytes); g * l.grainBytes < end; g++) {
      const k = g - first;
      const e = table.after[k]!;
      const len = l.grainLength(g);
      if (e === 0) {
        const mustZero = !zero.isEmpty && !zero.clip(g * l.grainBytes, g * l.grainBytes + len).isEmpty;
        if (!this.hasParent) b.discarded += len;
        else if (mustZero && l.zeroGrain) {
          table.after[k] = GTE_ZERO;
          b.discarded += len;
        } else if (mustZero) {
          this.zeroKept += len;
          b.kept += len;
        }
        continue;
      }
      if (e === GTE_ZERO && l.zeroGrain) {
        b.discarded += len;
        continue;
      }
      if (this.hasParent && !l.zeroGrain) {
        this.deltaKept += len;
        b.kept += len;
        continue;
      }
      table.after[k] = this.hasParent ? GTE_ZERO : 0;
      b.freed.push([g, e]);
      b.discarded += len;
    }
  }

  /** Make a batch durable in the safe order, then release what it freed. */
  private async commit(b: Batch, release: boolean): Promise<void> {
    const l = this.layout;
    let wrote = false;
    for (const [t, table] of b.tables) {
      const changed = (was: Uint32Array) => {
        const ks: number[] = [];
        for (let k = 0; k < l.perTable; k++) if (table.after[k] !== was[k]) ks.push(k);
        return ks;
      };
      const value = (k: number) => table.after[k]!;
      const gtKs = changed(table.before);
      if (gtKs.length) await l.writeEntries(l.gt, t, gtKs, value);
      if (l.rgt) {
        const rgtKs = changed(table.redundant ?? table.before);
        if (rgtKs.length) await l.writeEntries(l.rgt, t, rgtKs, value);
        wrote ||= rgtKs.length > 0;
      }
      wrote ||= gtKs.length > 0;
    }
    if (!wrote) return;
    await l.file.sync();
    for (const t of b.tables.keys()) l.staleRedundant.delete(t);
    for (const [entry, sector] of b.freed) l.slots.remove(entry, sector);
    if (!release) return;
    const sectors = b.freed.map(([, s]) => s).sort((x, y) => x - y);
    let i = 0;
    while (i < sectors.length) {
      let j = i + 1;
      while (j < sectors.length && sectors[j] === sectors[j - 1]! + l.grainSectors) j++;
      const at = sectors[i]! * SECTOR;
      l.file.release(at, Math.min((j - i) * l.grainBytes, l.file.size - at));
      i = j;
    }
  }

  /** Zeros over the unaligned edges of --zero devices: written into data grains; zero and unallocated grains already read as zero. */
  async writeZeros(ranges: Extents): Promise<void> {
    const l = this.layout;
    let wrote = false;
    let unmarked = 0;
    for (const r of ranges.clip(0, l.virtualSize)) {
      for (let pos = r.start; pos < r.end; ) {
        const g = Math.floor(pos / l.grainBytes);
        const stop = Math.min(r.end, (g + 1) * l.grainBytes);
        const t = Math.floor(g / l.perTable);
        const e = l.gt.dir[t] === 0 ? 0 : (await l.readEntries(t))[g - t * l.perTable]!;
        if (e !== 0 && !(e === GTE_ZERO && l.zeroGrain)) {
          await l.file.write(Buffer.alloc(stop - pos), e * SECTOR + (pos - g * l.grainBytes));
          wrote = true;
        } else if (e === 0 && this.hasParent) {
          unmarked += stop - pos;
        }
        pos = stop;
      }
    }
    if (wrote) await l.file.sync();
    if (unmarked) this.warn(`${unmarked} bytes at the unaligned edges of --zero devices still read as the parent disk's data (no grain of this delta VMDK holds them)`);
  }
}
