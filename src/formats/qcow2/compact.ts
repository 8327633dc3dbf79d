/**
 * qcow2 compaction in place: after the discard, the clusters past the new end (data, L2 tables,
 * refcount blocks, the L1 and refcount tables, bitmap structures, compressed fragments) move into
 * the free clusters below it (compact-plan.ts), then the file is truncated; on a block device the
 * new image end is reported instead, and the space past it released.
 *
 * Every move is copy-on-write, in the order that survives a power cut at any instant:
 *   1. the destination's refcount set, fdatasync (a cut now leaks it);
 *   2. the bytes copied there, fdatasync;
 *   3. the one pointer switched (an L2 or L1 entry, a refcount-table entry, a header field, a
 *      bitmap table or directory entry), fdatasync (the old copy now leaks);
 *   4. the old cluster's refcount cleared, fdatasync.
 * Data and tables move in batches (one round of four fdatasyncs each), contiguous structures and
 * refcount blocks one by one. The guest ranges of moved data are first marked dirty in every
 * enabled persistent bitmap. Refcount blocks left counting only clusters past the end are
 * dropped, then the file is truncated. A cut anywhere leaves the old or the new location
 * referenced, never neither; at worst leaked clusters, which the next run gives back.
 */
import type { BlockFile } from '../../io/file.js';
import { ExtentsBuilder, type Extents } from '../../io/extents.js';
import { yieldToEventLoop, type CompactContext, type CompactResult, type Compactor } from '../discard-types.js';
import type { Qcow2Header } from './header.js';
import type { Qcow2Refcounts } from './discard-refcount.js';
import { HEADER_L1_TABLE_OFFSET, HEADER_REFCOUNT_TABLE_OFFSET, type Qcow2Layout } from './discard-layout.js';
import type { ClusterSource, Qcow2Bitmaps } from './bitmaps.js';
import { planCompaction, type CompactPlan, type Move } from './compact-plan.js';

/** Bytes moved per batch (each batch: four fdatasyncs), and at most this many clusters. */
const BATCH_BYTES = 64 << 20;
const BATCH_MAX_CLUSTERS = 4096;
/** Compaction rounds at most (each after the first fills what dropped refcount blocks left). */
const MAX_ROUNDS = 4;
/** Bytes per copy: runs of neighbouring clusters go in one copy_file_range up to this size. */
const COPY_RUN = 64 << 20;

type DataMove = Extract<Move, { kind: 'data' }>;
type SingleMove = Exclude<Move, { kind: 'fragment' | 'run' | 'refblock' }>;
type FragmentMove = Extract<Move, { kind: 'fragment' }>;

export class Qcow2Compactor implements Compactor {
  private readonly cs: number;

  constructor(
    private readonly file: BlockFile,
    private readonly h: Qcow2Header,
    private readonly layout: Qcow2Layout,
    private readonly refcounts: Qcow2Refcounts,
    private readonly bitmaps: Qcow2Bitmaps | undefined,
  ) {
    this.cs = h.clusterSize;
  }

  private plan(): Promise<CompactPlan> {
    return planCompaction({ file: this.file, h: this.h, layout: this.layout, refcounts: this.refcounts, bitmaps: this.bitmaps });
  }

  async plannedEnd(): Promise<number> {
    const p = await this.plan();
    this.refcounts.dropCache();
    return p.endClusters * this.cs;
  }

  async compact(ctx: CompactContext): Promise<CompactResult> {
    const first = await this.plan();
    const endBefore = this.file.isBlockDevice ? first.usedEndClusters * this.cs : this.file.size;
    const result: CompactResult = { endBefore, endAfter: endBefore, moved: 0, truncated: false, releasedByTruncation: 0, aborted: false };
    if (first.refused) {
      ctx.warn(`${this.file.path}: not compacted: ${first.refused}`);
      return result;
    }
    // Rounds: refcount blocks left counting only clusters past the end are dropped after a round;
    // where they sat below it, the next round fills their place.
    let plan = first;
    let end = first.usedEndClusters;
    for (let round = 0; round < MAX_ROUNDS; round++) {
      if (round > 0) plan = await this.plan();
      if (plan.refused) break;
      const moved = await this.runPlan(plan, ctx, result);
      if (moved === undefined) return { ...result, aborted: true };
      end = plan.endClusters;
      const dropped = await this.dropBlocksPast(end);
      if (moved === 0 && dropped === 0) break;
    }
    if (!this.file.isBlockDevice && this.file.size > end * this.cs) {
      const before = await this.file.allocatedBytes();
      await this.file.truncate(end * this.cs);
      await this.file.sync();
      result.releasedByTruncation = Math.max(0, before - (await this.file.allocatedBytes()));
      result.truncated = true;
    }
    result.endAfter = end * this.cs;
    if (ctx.release) await this.releaseFree(end * this.cs);
    return result;
  }

  /** One round: mark the bitmaps, then every move of the plan. Returns the moves made, or undefined when aborted. */
  private async runPlan(planned: CompactPlan, ctx: CompactContext, result: CompactResult): Promise<number | undefined> {
    let plan = planned;
    if (this.bitmaps?.hasTracking && plan.movedGuests.length) {
      // The moved ranges are marked first; new bitmap clusters change the free space, so plan again
      // (the second plan moves a subset of what the first did).
      const fresh = await this.bitmaps.markDirty(this.guestRanges(plan.movedGuests), this.refcounts, this.lowFree(), ctx.warn);
      for (const c of fresh) this.layout.markRange(c * this.cs, this.cs);
      if (fresh.length) plan = await this.plan();
    }
    const total = result.moved + plan.moves.reduce((a, m) => a + this.moveBytes(m), 0);
    const progress = (): void => ctx.onProgress?.(result.moved, total);

    // Contiguous structures and refcount blocks, one at a time; then L2 tables and bitmap data;
    // then data clusters; then compressed fragments.
    for (const m of plan.moves) {
      if (m.kind !== 'run' && m.kind !== 'refblock') continue;
      if (m.kind === 'run') await this.moveRun(m);
      else await this.moveRefblock(m);
      result.moved += this.moveBytes(m);
      progress();
    }
    const groups: Array<Move['kind'][]> = [['l2', 'bitmap-data'], ['data'], ['fragment']];
    const per = Math.max(1, Math.min(BATCH_MAX_CLUSTERS, Math.floor(BATCH_BYTES / this.cs)));
    for (const kinds of groups) {
      const list = plan.moves.filter((m) => kinds.includes(m.kind));
      for (let i = 0; i < list.length; i += per) {
        // Stopping between batches leaves a consistent image, just not a shorter one.
        if (ctx.signal?.aborted) return undefined;
        const batch = list.slice(i, i + per);
        await this.moveBatch(batch);
        for (const m of batch) result.moved += this.moveBytes(m);
        progress();
        await yieldToEventLoop();
      }
    }
    this.refcounts.dropCache();
    if (ctx.signal?.aborted) return undefined;
    return plan.moves.length;
  }

  private moveBytes(m: Move): number {
    if (m.kind === 'fragment') return m.frag.sectors * 512;
    if (m.kind === 'run') return m.run.clusters * this.cs;
    return this.cs;
  }

  /** Guest byte ranges of guest clusters, ascending and merged. */
  private guestRanges(guests: number[]): Extents {
    const b = new ExtentsBuilder();
    for (const g of [...new Set(guests)].sort((a, x) => a - x)) b.add(g * this.cs, Math.min((g + 1) * this.cs, this.h.virtualSize));
    return b.build();
  }

  /** New bitmap clusters go in the lowest free clusters (compaction then plans around them). */
  private lowFree(): ClusterSource {
    let c = 1;
    const n = Math.ceil(this.file.size / this.cs);
    return {
      take: async () => {
        for (; c < n; c++) {
          if (this.refcounts.covers(c) && !this.layout.isMetadata(c) && (await this.refcounts.get(c)) === 0) return c++;
        }
        return undefined;
      },
    };
  }

  /** Set refcounts and make them durable. */
  private async setRefcounts(values: Map<number, number>): Promise<void> {
    for (const [c, v] of values) await this.refcounts.set(c, v);
    await this.refcounts.flush();
  }

  /** A contiguous structure: the L1 table, the refcount table, the bitmap directory or a bitmap table. */
  private async moveRun(m: Extract<Move, { kind: 'run' }>): Promise<void> {
    const { run, to } = m;
    const cs = this.cs;
    const dest = new Map<number, number>();
    for (let k = 0; k < run.clusters; k++) dest.set(to + k, 1);
    await this.setRefcounts(dest);
    let bytes: Buffer;
    switch (run.what) {
      case 'L1 table':
        bytes = this.layout.l1Bytes();
        break;
      case 'refcount table':
        bytes = this.refcounts.tableBytes();
        break;
      case 'bitmap directory':
        bytes = this.bitmaps!.directoryBytes();
        break;
      case 'bitmap table':
        bytes = this.bitmaps!.tableBytes(run.bitmap!);
        break;
    }
    await this.file.write(bytes, to * cs);
    await this.file.sync();
    const offset = Buffer.alloc(8);
    offset.writeBigUInt64BE(BigInt(to * cs));
    switch (run.what) {
      case 'L1 table':
        await this.file.write(offset, HEADER_L1_TABLE_OFFSET);
        this.h.l1TableOffset = to * cs;
        break;
      case 'refcount table':
        await this.file.write(offset, HEADER_REFCOUNT_TABLE_OFFSET);
        this.h.refcountTableOffset = to * cs;
        break;
      case 'bitmap directory':
        await this.bitmaps!.pointAtDirectory(to * cs);
        break;
      case 'bitmap table':
        await this.bitmaps!.pointAtTable(run.bitmap!, to * cs);
        break;
    }
    await this.file.sync();
    this.layout.unmarkRange(run.first * cs, run.clusters * cs);
    this.layout.markRange(to * cs, run.clusters * cs);
    const old = new Map<number, number>();
    for (let k = 0; k < run.clusters; k++) old.set(run.first + k, 0);
    await this.setRefcounts(old);
  }

  /** A refcount block: its copy carries its own counts (including the copy's, when it covers itself). */
  private async moveRefblock(m: Extract<Move, { kind: 'refblock' }>): Promise<void> {
    const cs = this.cs;
    await this.setRefcounts(new Map([[m.to, 1]]));
    await this.file.write(await this.refcounts.blockBytes(m.index), m.to * cs);
    await this.file.sync();
    await this.refcounts.setTableEntry(m.index, m.to * cs);
    await this.file.sync();
    this.layout.unmarkRange(m.from * cs, cs);
    this.layout.markRange(m.to * cs, cs);
    await this.setRefcounts(new Map([[m.from, 0]]));
  }

  /** A batch of L2 tables, bitmap data clusters, data clusters or fragments, in the four steps. */
  private async moveBatch(batch: Move[]): Promise<void> {
    const cs = this.cs;
    // Any source may go to any destination of the batch (every destination lies below every
    // source): pair them in ascending order so neighbours copy in one piece.
    const singles = batch.filter((m): m is SingleMove => m.kind !== 'fragment');
    if (singles.length && singles.every((m) => m.kind === 'data')) {
      const tos = singles.map((m) => m.to).sort((a, b) => a - b);
      (singles as DataMove[]).sort((a, b) => a.from - b.from).forEach((m, i) => (m.to = tos[i]!));
    }
    const frags = batch.filter((m): m is FragmentMove => m.kind === 'fragment');

    // 1. Destinations counted (a repacking cluster may already hold fragments of the last batch).
    const dest = new Map<number, number>();
    for (const m of singles) dest.set(m.to, 1);
    const packed = new Map<number, number>();
    for (const f of frags) for (const c of this.touched(f.to, f.frag.sectors)) packed.set(c, (packed.get(c) ?? 0) + 1);
    for (const [c, n] of packed) dest.set(c, (await this.refcounts.get(c)) + n);
    await this.setRefcounts(dest);

    // 2. Bytes copied.
    await this.copySingles(singles);
    for (const f of frags) {
      const bytes = Buffer.alloc(f.frag.sectors * 512);
      await this.file.readZeroPadded(bytes, f.frag.host - (f.frag.host % 512));
      await this.file.write(bytes, f.to - (f.to % 512));
    }
    await this.file.sync();

    // 3. Pointers switched: L1 entries, bitmap table entries, and L2 tables rewritten whole (each
    //    entry is valid old or new, so a torn table write is too).
    const byTable = new Map<number, Array<{ idx: number; host?: number; frag?: { hi: number; lo: number } }>>();
    const entry = (guest: number, change: { host?: number; frag?: { hi: number; lo: number } }): void => {
      const l1i = Math.floor(guest / this.layout.l2Entries);
      let list = byTable.get(l1i);
      if (!list) byTable.set(l1i, (list = []));
      list.push({ idx: guest % this.layout.l2Entries, ...change });
    };
    for (const m of singles) {
      if (m.kind === 'l2') await this.layout.setL1(m.l1i, m.to * cs);
      else if (m.kind === 'bitmap-data') await this.bitmaps!.pointAtData(m.bitmap, m.j, m.to * cs);
      else entry(m.guest, { host: m.to * cs });
    }
    for (const f of frags) entry(f.frag.guest, { frag: this.layout.fragmentWords(f.to, f.frag.sectors) });
    for (const [l1i, list] of byTable) {
      const t = await this.layout.readL2(l1i);
      for (const e of list) {
        const at = e.idx * this.layout.entryBytes;
        if (e.host !== undefined) {
          // The new offset, COPIED (refcount 1), and the old low bits (bit 0: a preallocated zero cluster).
          t.writeBigUInt64BE(BigInt(e.host) | (t.readBigUInt64BE(at) & 0x1ffn) | (1n << 63n), at);
        } else {
          t.writeUInt32BE(e.frag!.hi >>> 0, at);
          t.writeUInt32BE(e.frag!.lo >>> 0, at + 4);
        }
      }
      await this.file.write(t, this.layout.l2Offset(l1i));
    }
    await this.file.sync();
    for (const m of singles) {
      if (m.kind === 'l2' || m.kind === 'bitmap-data') {
        this.layout.unmarkRange(m.from * cs, cs);
        this.layout.markRange(m.to * cs, cs);
      }
    }

    // 4. Old clusters uncounted.
    const old = new Map<number, number>();
    for (const m of singles) old.set(m.from, 0);
    const lost = new Map<number, number>();
    for (const f of frags) for (const c of this.touched(f.frag.host, f.frag.sectors)) lost.set(c, (lost.get(c) ?? 0) + 1);
    for (const [c, n] of lost) old.set(c, Math.max(0, (await this.refcounts.get(c)) - n));
    await this.setRefcounts(old);
    this.refcounts.dropCache();
  }

  /** Host clusters a fragment's sectors touch. */
  private touched(host: number, sectors: number): number[] {
    const start = host - (host % 512);
    const out: number[] = [];
    for (let c = Math.floor(start / this.cs); c <= Math.floor((start + sectors * 512 - 1) / this.cs); c++) out.push(c);
    return out;
  }

  private async copySingles(moves: SingleMove[]): Promise<void> {
    const cs = this.cs;
    const sorted = [...moves].sort((a, b) => a.from - b.from);
    let i = 0;
    while (i < sorted.length) {
      let j = i + 1;
      while (j < sorted.length && (j - i) * cs < COPY_RUN && sorted[j]!.from === sorted[j - 1]!.from + 1 && sorted[j]!.to === sorted[j - 1]!.to + 1) j++;
      await this.file.copyWithin(sorted[i]!.from * cs, sorted[i]!.to * cs, (j - i) * cs);
      i = j;
    }
  }

  /**
   * Drop the refcount blocks that count only clusters at or past `end` (all free now), then
   * uncount their own clusters where a kept block counts them. Returns how many were dropped.
   */
  private async dropBlocksPast(end: number): Promise<number> {
    const where: Array<{ i: number; at: number }> = [];
    for (let i = 0; i < this.refcounts.tableEntries; i++) {
      const off = this.refcounts.blockOffset(i);
      if (off !== 0 && i * this.refcounts.perBlock >= end) where.push({ i, at: off / this.cs });
    }
    if (where.length === 0) return 0;
    for (const { i } of where) await this.refcounts.setTableEntry(i, 0);
    await this.file.sync();
    const uncount = new Map<number, number>();
    for (const { at } of where) if (this.refcounts.covers(at)) uncount.set(at, 0);
    for (const { at } of where) this.layout.unmarkRange(at * this.cs, this.cs);
    await this.setRefcounts(uncount);
    this.refcounts.dropCache();
    return where.length;
  }

  /** Give back the free clusters below the end that still hold data (and a device's space past it). */
  private async releaseFree(end: number): Promise<void> {
    const cs = this.cs;
    const last = end / cs;
    let c = 1;
    while (c < last) {
      const d = this.file.seekData(c * cs);
      if (d < 0 || d >= end) break;
      c = Math.floor(d / cs);
      if ((await this.refcounts.get(c)) !== 0 || this.layout.isMetadata(c)) {
        c++;
        continue;
      }
      let e = c + 1;
      while (e < last && (await this.refcounts.get(e)) === 0 && !this.layout.isMetadata(e)) e++;
      this.file.release(c * cs, (e - c) * cs);
      c = e;
    }
    if (this.file.isBlockDevice && this.file.size > end) this.file.release(end, this.file.size - end);
    this.refcounts.dropCache();
  }
}
