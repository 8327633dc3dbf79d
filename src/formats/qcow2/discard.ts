/**
 * In-place discard for qcow2 (qemu docs/interop/qcow2.rst). Clusters wholly inside the discard
 * ranges lose their data: the L2 entry becomes unallocated (no backing file) or a zero cluster
 * (version 3 with a backing file; version 2 cannot say "zero", so those clusters are kept). With
 * extended L2 entries the same holds per whole cluster (all subclusters unallocated, or all
 * zero); a partly used cluster is kept. Over a backing file only this file's own clusters are
 * given back; its unallocated clusters keep showing the backing file's data (free space the guest
 * does not use), except in --zero devices, where they are marked zero too. Never making a cluster
 * unallocated over a backing file means no cluster ever starts to show backing data it did not
 * show before.
 * Work goes in batches of L2 tables, each in the order that survives a crash at any instant:
 *   0. the changed guest ranges marked dirty in every enabled persistent bitmap, fdatasync;
 *   1. L2 tables (and L1 entries of tables left empty) written, fdatasync;
 *   2. refcounts of the freed host clusters decremented, fdatasync;
 *   3. host clusters whose refcount reached 0 released (punched), unless compaction follows.
 * A crash leaves at worst leaked clusters (refcount > 0, unreferenced), which the final pass of
 * the next run (discard-leaks.ts) gives back.
 */
import type { BlockFile } from '../../io/file.js';
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';
import { Extents, ExtentsBuilder } from '../../io/extents.js';
import {
  yieldToEventLoop,
  type Compactor,
  type DiscardBackend,
  type DiscardContext,
  type DiscardResult,
} from '../discard-types.js';
import { COMPAT_LAZY_REFCOUNTS, INCOMPAT_DIRTY, type Qcow2Header } from './header.js';
import { Qcow2Refcounts } from './discard-refcount.js';
import { L2_COMPRESSED, L2_COPIED, Qcow2Layout, standardHost } from './discard-layout.js';
import { reclaimLeaks } from './discard-leaks.js';
import { Qcow2Bitmaps, type ClusterSource } from './bitmaps.js';
import { Qcow2Compactor } from './compact.js';
import { consecutiveRuns } from '../common/runs.js';

/** L2 tables changed per batch (two fdatasyncs each). */
const TABLES_PER_BATCH = 32;
/** Freed host clusters per batch, to bound memory on images with small clusters. */
const CLUSTERS_PER_BATCH = 1 << 18;
/** Extended L2: the subcluster bitmap word saying "all 32 subclusters read as zero". */
const ALL_ZERO_BITS = 0xffffffff;

interface Batch {
  /** L2 tables to write back: L1 index -> { host offset, new contents }. */
  tables: Map<number, { offset: number; data: Buffer; empty: boolean }>;
  /** Host clusters losing one reference each (repeated when several references go). */
  decrements: number[];
  /** Guest ranges whose entries change (for the dirty bitmaps), ascending. */
  changed: ExtentsBuilder;
  /** Virtual bytes the batch covers (for progress), discarded and kept. */
  covered: number;
  discarded: number;
  kept: number;
}

function newBatch(): Batch {
  return { tables: new Map(), decrements: [], changed: new ExtentsBuilder(), covered: 0, discarded: 0, kept: 0 };
}

/**
 * Host clusters for new bitmap data: those this run freed, lowest first, then the end of the file
 * where a refcount block already covers it.
 */
class FreedClusters implements ClusterSource {
  readonly freed: number[] = [];
  constructor(
    private readonly file: BlockFile,
    private readonly cs: number,
    private readonly refcounts: Qcow2Refcounts,
  ) {}
  async take(): Promise<number | undefined> {
    if (this.freed.length) {
      this.freed.sort((a, b) => b - a);
      return this.freed.pop();
    }
    const end = Math.ceil(this.file.size / this.cs);
    return this.refcounts.covers(end) ? end : undefined;
  }
}

export class Qcow2Discarder implements DiscardBackend {
  private readonly cs: number;
  private readonly span: number;
  private v2BackingKept = 0;
  private sharedKept = 0;
  private partialKept = 0;
  /** --zero bytes over a backing file with no L2 table to mark them zero. */
  private zeroKept = 0;
  /** The ranges of this run that must read as zero afterwards (--zero devices). */
  private mustZero = new Extents();
  private readonly pool: FreedClusters;
  readonly compactor: Compactor;

  private constructor(
    private readonly file: BlockFile,
    private readonly h: Qcow2Header,
    private readonly hasBacking: boolean,
    private readonly layout: Qcow2Layout,
    private readonly refcounts: Qcow2Refcounts,
    private readonly bitmaps: Qcow2Bitmaps | undefined,
    /** Said when the discard starts (found while opening, before a context to warn through). */
    private readonly notes: string[],
  ) {
    this.cs = h.clusterSize;
    this.span = this.cs * layout.l2Entries;
    this.pool = new FreedClusters(file, this.cs, refcounts);
    this.compactor = new Qcow2Compactor(file, h, layout, refcounts, bitmaps);
  }

  /** Refuse what in-place mode must not touch, before anything is written. */
  static async open(file: BlockFile, header: Qcow2Header, hasBacking: boolean): Promise<Qcow2Discarder> {
    const p = file.path;
    // Our own copy: compaction moves the L1 and refcount tables and updates these fields.
    const h: Qcow2Header = { ...header };
    if (!file.writable) throw new Error(`${p}: qcow2 in-place discard needs the image opened for writing`);
    if (h.incompatible & INCOMPAT_DIRTY) {
      const lazy = (h.compatible & COMPAT_LAZY_REFCOUNTS) !== 0n ? ' (lazy refcounts)' : '';
      throw new SparsifyError(`${p}: the qcow2 image is dirty${lazy}: its refcounts may be stale; run 'qemu-img check -r all ${p}' first`);
    }
    if (h.hasDataFile) throw new SparsifyError(`${p}: qcow2 images with an external data file are not supported yet in --in-place mode; use copy mode`);
    if (h.nbSnapshots > 0) {
      throw new SparsifyError(
        `${p}: the image has ${h.nbSnapshots} internal snapshot(s), which in-place mode cannot keep (they share clusters with the active layer); ` +
          "delete them ('qemu-img snapshot -d') or use copy mode, which does not copy internal snapshots",
      );
    }
    const notes: string[] = [];
    const refcounts = await Qcow2Refcounts.load(file, h);
    const bitmaps = await Qcow2Bitmaps.load(file, h, (m) => notes.push(m));
    const layout = await Qcow2Layout.load(file, h, refcounts);
    for (const r of bitmaps?.hostRanges() ?? []) layout.markRange(r.offset, r.length);
    return new Qcow2Discarder(file, h, hasBacking, layout, refcounts, bitmaps, notes);
  }

  get granularity(): number {
    return this.cs;
  }

  get description(): string {
    const mode = this.hasBacking ? (this.h.version === 3 ? 'zero clusters' : 'kept (v2 with backing file)') : 'unallocated clusters';
    const ext = this.h.extendedL2 ? ', extended L2 entries (whole clusters only)' : '';
    const bm = this.bitmaps?.hasTracking ? ', changes marked in the enabled dirty bitmaps' : '';
    return `qcow2 v${this.h.version}, ${this.cs}-byte clusters${ext}, discarded ranges become ${mode}${bm}`;
  }

  /** Whole clusters; the last, partial cluster counts as whole when the range reaches the end of the disk. */
  align(ranges: Extents): Extents {
    const size = this.h.virtualSize;
    const inward = ranges.clip(0, size).alignInward(this.cs);
    const tailStart = Math.floor(size / this.cs) * this.cs;
    if (tailStart < size && ranges.clip(tailStart, size).total() === size - tailStart) return inward.union(Extents.of(tailStart, size));
    return inward;
  }

  canRelease(): Promise<boolean> {
    return this.file.canRelease();
  }

  async discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
    for (const n of this.notes) ctx.warn(n);
    this.mustZero = ctx.zero ?? new Extents();
    let done = 0;
    let discarded = 0;
    let kept = 0;
    let batch = newBatch();
    const commit = async (): Promise<void> => {
      await this.commit(batch, ctx);
      done += batch.covered;
      discarded += batch.discarded;
      kept += batch.kept;
      ctx.onProgress(done);
      batch = newBatch();
    };
    const result = (aborted: boolean): DiscardResult => {
      if (this.v2BackingKept) {
        ctx.warn(`${this.v2BackingKept} bytes of free space kept: a version 2 (compat=0.10) qcow2 image with a backing file cannot mark clusters as zero (upgrade with 'qemu-img amend -o compat=1.1')`);
      }
      if (this.sharedKept) ctx.warn(`${this.sharedKept} bytes of free space kept: their clusters are shared (refcount above 1)`);
      if (this.zeroKept) {
        ctx.warn(`${this.zeroKept} bytes of --zero devices still read as the backing file's data: the image has no L2 table there to mark them as zero (copy mode writes them as zeros)`);
      }
      if (this.partialKept) ctx.warn(`${this.partialKept} bytes of --zero devices kept in clusters whose other subclusters show the backing file`);
      return { discarded, kept, aborted };
    };

    for (const r of ranges) {
      let pos = r.start;
      while (pos < r.end) {
        if (ctx.signal?.aborted) {
          await commit();
          return result(true);
        }
        const l1i = Math.floor(pos / this.span);
        const end = Math.min(r.end, (l1i + 1) * this.span);
        await this.discardInTable(l1i, pos, end, batch);
        batch.covered += end - pos;
        pos = end;
        if (batch.tables.size >= TABLES_PER_BATCH || batch.decrements.length >= CLUSTERS_PER_BATCH) await commit();
        else if (batch.tables.size === 0 && batch.covered >= 64 * this.span) {
          // Long unallocated stretches: report progress and let signals in.
          await commit();
          await yieldToEventLoop();
        }
      }
    }
    await commit();
    if (ctx.signal?.aborted) return result(true);
    // Leaked clusters (an earlier run killed between its steps) and released-but-not-yet clusters.
    const leaks = await reclaimLeaks(this.file, this.h, this.layout, this.refcounts, ctx);
    if (leaks.leaked) ctx.warn(`gave back ${leaks.leaked} leaked qcow2 clusters (left by an interrupted run)`);
    return result(false);
  }

  /**
   * Write entry `e` of an L2 table as "reads as zero": unallocated without a backing file, a zero
   * cluster (or all subclusters zero) with one. Returns false for a v2 image over a backing file.
   */
  private dropEntry(table: Buffer, e: number): boolean {
    if (this.hasBacking && this.h.version !== 3) return false;
    table.fill(0, e, e + this.layout.entryBytes);
    if (!this.hasBacking) return true;
    if (this.h.extendedL2) table.writeUInt32BE(ALL_ZERO_BITS, e + 8);
    else table.writeUInt32BE(1, e + 4);
    return true;
  }

  /** Plan the changes for guest range [start, end) inside the span of L1 entry `l1i`. */
  private async discardInTable(l1i: number, start: number, end: number, b: Batch): Promise<void> {
    const l2off = this.layout.l2Offset(l1i);
    // Over a backing file, unallocated clusters show its data: free space the guest does not use,
    // left as it is, except where a --zero device must read as zero.
    const zero = this.hasBacking ? this.mustZero.clip(start, end) : this.mustZero.clip(0, 0);
    if (l2off === 0) {
      // Nothing allocated here: without a backing file it already reads as zero (discarded); with
      // one it shows the backing file's data, which is not ours to discard.
      const z = zero.total();
      this.zeroKept += z;
      b.kept += z;
      if (!this.hasBacking) b.discarded += end - start;
      return;
    }
    let t = b.tables.get(l1i);
    if (!t) {
      // A table with more than one reference (snapshots, or a broken image) must not change in place.
      if ((await this.refcounts.get(l2off / this.cs)) !== 1) {
        this.sharedKept += end - start;
        b.kept += end - start;
        return;
      }
      const data = await this.layout.readL2(l1i);
      t = { offset: l2off, data, empty: false };
    }
    const table = t.data;
    const base = l1i * this.span;
    let changed = false;
    for (let g = start; g < end; g += this.cs) {
      const idx = Math.floor((g - base) / this.cs);
      const len = Math.min(this.cs, end - g);
      const e = idx * this.layout.entryBytes;
      const hi = table.readUInt32BE(e);
      const lo = table.readUInt32BE(e + 4);
      const keep = (): void => {
        this.v2BackingKept += len;
        b.kept += len;
      };
      if (hi & L2_COMPRESSED) {
        if (this.hasBacking && this.h.version !== 3) {
          keep();
          continue;
        }
        for (const c of this.layout.compressedClusters(hi, lo, g)) b.decrements.push(c);
      } else {
        const host = standardHost(hi, lo);
        if (host === 0) {
          // Nothing of this file's own: reads as zero, or as the backing file's data (free space too).
          const readsZero = this.h.extendedL2 ? table.readUInt32BE(e + 8) === ALL_ZERO_BITS && table.readUInt32BE(e + 12) === 0 : (lo & 1) === 1;
          const showsBacking = this.hasBacking && !readsZero;
          const mustZero = showsBacking && !zero.clip(g, g + len).isEmpty;
          if (!mustZero) {
            if (!showsBacking) b.discarded += len;
            continue;
          }
          // A --zero device over a backing file: the cluster must be marked zero (nothing to free).
          if (this.h.extendedL2 && table.readUInt32BE(e + 12) !== 0) {
            this.partialKept += len;
            b.kept += len;
            continue;
          }
        } else {
          const c = this.layout.dataCluster(host, g);
          const rc = await this.refcounts.get(c);
          if (rc === 0) throw new CorruptError(`${this.file.path}: qcow2: data cluster at ${hex(host)} (guest offset ${hex(g)}) has refcount 0; run 'qemu-img check -r all' first`);
          if (rc !== 1 || (hi & L2_COPIED) === 0) {
            this.sharedKept += len;
            b.kept += len;
            continue;
          }
          if (this.hasBacking && this.h.version !== 3) {
            keep();
            continue;
          }
          b.decrements.push(c);
        }
      }
      if (!this.dropEntry(table, e)) {
        keep();
        continue;
      }
      b.changed.add(g, g + len);
      b.discarded += len;
      changed = true;
    }
    if (changed) {
      t.empty = !this.hasBacking && table.every((x) => x === 0);
      b.tables.set(l1i, t);
    }
  }

  /** Make a batch durable in the safe order, then release what it freed. */
  private async commit(b: Batch, ctx: DiscardContext): Promise<void> {
    if (b.tables.size === 0) return;
    // Check every decrement first: a refcount going below zero means the image was already corrupt.
    const count = new Map<number, number>();
    for (const c of b.decrements) count.set(c, (count.get(c) ?? 0) + 1);
    const emptied: number[] = [];
    for (const [l1i, t] of b.tables) {
      if (!t.empty) continue;
      const c = t.offset / this.cs;
      if ((await this.refcounts.get(c)) === 1 && !count.has(c)) {
        emptied.push(l1i);
        count.set(c, 1);
      } else t.empty = false;
    }
    const after = new Map<number, number>();
    for (const [c, n] of count) {
      const rc = await this.refcounts.get(c);
      if (rc < n) throw new CorruptError(`${this.file.path}: qcow2: cluster at ${hex(c * this.cs)} has refcount ${rc} but ${n} references; run 'qemu-img check -r all' first`);
      after.set(c, rc - n);
    }

    // 0. The dirty bitmaps learn of the change before it is made.
    if (this.bitmaps?.hasTracking) {
      const fresh = await this.bitmaps.markDirty(b.changed.build(), this.refcounts, this.pool, ctx.warn);
      for (const c of fresh) this.layout.markRange(c * this.cs, this.cs);
    }
    // 1. L2 tables, then L1 entries of tables now empty.
    for (const t of b.tables.values()) if (!t.empty) await this.file.write(t.data, t.offset);
    for (const l1i of emptied) await this.layout.clearL1(l1i);
    await this.file.sync();
    // 2. Refcounts.
    for (const [c, v] of after) await this.refcounts.set(c, v);
    await this.refcounts.flush();
    this.refcounts.dropCache();
    // 3. Release the clusters nobody references any more (or keep them for compaction to reuse).
    const free = [...after].filter(([, v]) => v === 0).map(([c]) => c).sort((a, b) => a - b);
    this.pool.freed.push(...free);
    if (!ctx.release) return;
    for (const run of consecutiveRuns(free)) this.file.release(run.first * this.cs, run.count * this.cs);
  }
}
