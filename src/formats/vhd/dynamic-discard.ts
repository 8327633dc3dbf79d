/**
 * In-place discard and compaction for dynamic VHD (qemu: vpc), on the host layout of layout.ts.
 * A block wholly inside the discard ranges gets BAT entry 0xFFFFFFFF: it reads as zero. Where
 * holes can be punched, the guest's free space inside the blocks that stay becomes holes too
 * (release.ts). A differencing disk cannot say "zero" (an absent block shows the parent): it keeps
 * its blocks and says how many bytes it kept.
 *
 * The safety rule beyond "never neither": qemu appends a new block at the highest block end and
 * does not zero its data, counting on what lies past that point reading as zero (a file's end). So
 * space is made to read as zero before the BAT stops pointing at it, not after.
 * Discard:
 *   0. (release) any space nobody references (left by an interrupted run) is punched; fdatasync;
 *   then per batch of blocks:
 *   1. (release) the dropped blocks' slots are punched (the guest does not use them: zeros there
 *      change nothing it reads); fdatasync;
 *   2. their BAT entries become 0xFFFFFFFF; fdatasync;
 *   and last: (release) holes inside the blocks that stay; fdatasync.
 * Compaction (after a discard that released nothing):
 *   1. (release) what nobody references, the dropped slots among it, is punched; fdatasync;
 *   2. the blocks (bitmap + data, one slot) past the new end move into free slots lower down,
 *      copy-on-write in batches: copy, fdatasync, BAT entries, fdatasync (common/slot-moves.ts),
 *      then (release) the old slots are punched, fdatasync;
 *   3. the footer is written at the new end (the highest block end), fdatasync;
 *   4. the file is truncated after that footer, fdatasync;
 *   5. (release) holes inside the blocks where they now are, and in anything still unreferenced
 *      below the new end; fdatasync.
 * A power cut leaves every BAT entry pointing at its old or its new slot, both whole, no block past
 * the end of the file (qemu refuses that), and a valid footer at the end (the old one until step 4,
 * which cuts the file just after the new one). At worst slots nobody references: the next run
 * gives them back or cuts them off. Windows remain past qemu's append point: in a compacting run
 * the discard drops blocks without punching (it is told not to release), so their slots keep their
 * bytes until step 1 is durable; a moved block's old slot keeps them from its BAT entry's
 * fdatasync until the punch after it is durable (no order zeroes a slot before its BAT entry
 * leaves it); where holes cannot be punched, both last until the truncation. qemu appending a
 * block there before a rerun would show those bytes to the guest.
 */
import { CorruptError, hex } from '../../io/errors.js';
import { Extents } from '../../io/extents.js';
import { FOOTER_SIZE } from '../common/vhd-footer.js';
import { moveSlots, planSlotMoves, type SlotPlan } from '../common/slot-moves.js';
import {
  yieldToEventLoop,
  type CompactContext,
  type CompactResult,
  type Compactor,
  type DiscardBackend,
  type DiscardContext,
  type DiscardResult,
} from '../discard-types.js';
import { NO_BLOCK, type VhdLayout } from './layout.js';
import { punchInsideBlocks, punchUnit, releaseUnreferenced } from './release.js';

/** Blocks whose BAT entries change per batch (two fdatasyncs each). */
const BLOCKS_PER_BATCH = 4096;
/** Slots copied per batch of a compaction (2 MiB each in qemu's images). */
const MOVES_PER_BATCH = 16;
const ZERO_CHUNK = 1 << 20;
const SECTOR = 512;

export class DynamicVhdDiscarder implements DiscardBackend {
  /** Only a dynamic disk: a differencing disk discards nothing, so it has nothing to compact. */
  readonly compactor?: Compactor;
  readonly writeZeros?: (ranges: Extents) => Promise<void>;

  /** The plan's guest ranges inside blocks that stay (what align() leaves out of whole blocks). */
  private inside = new Extents();
  /** Guest ranges inside kept blocks that were punched and read as zero. */
  private zeroedInside = new Extents();

  private constructor(
    private readonly layout: VhdLayout,
    private readonly virtualSize: number,
    /** The host filesystem's block: the unit of holes inside kept blocks. */
    private readonly unit: number,
  ) {
    if (!layout.differencing) {
      this.compactor = { plannedEnd: () => this.plannedEnd(), compact: (ctx) => this.compact(ctx) };
      this.writeZeros = (ranges) => this.zeroInBlocks(ranges);
    }
  }

  static async open(layout: VhdLayout, virtualSize: number): Promise<DynamicVhdDiscarder> {
    if (layout.entries * layout.blockSize < virtualSize) {
      throw new CorruptError(`vpc: ${layout.file.path}: BAT of ${layout.entries} entries does not cover virtual size ${virtualSize}`);
    }
    return new DynamicVhdDiscarder(layout, virtualSize, await punchUnit(layout.file.path));
  }

  get description(): string {
    const bs = this.layout.blockSize;
    return this.layout.differencing
      ? `vpc differencing, ${bs}-byte blocks kept (an absent block shows the parent)`
      : `vpc dynamic, ${bs}-byte blocks become unallocated, free space inside the others holes`;
  }

  /**
   * Whole blocks; the last, partial block counts as whole when the range reaches the end of the
   * disk. The rest of the plan, inside blocks that stay, is kept for holes inside them.
   */
  align(ranges: Extents): Extents {
    const size = this.virtualSize;
    const bs = this.layout.blockSize;
    let whole = ranges.clip(0, size).alignInward(bs);
    const tailStart = Math.floor(size / bs) * bs;
    if (tailStart < size && ranges.clip(tailStart, size).total() === size - tailStart) whole = whole.union(Extents.of(tailStart, size));
    this.inside = this.layout.differencing ? new Extents() : ranges.clip(0, size).subtract(whole);
    return whole;
  }

  canRelease(): Promise<boolean> {
    return this.layout.file.canRelease();
  }

  async discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
    if (this.layout.differencing) return this.keepAll(ranges, ctx);
    const { file, blockSize: bs } = this.layout;
    if (ctx.release) {
      const leaked = await releaseUnreferenced(this.layout, this.layout.floor, this.fileDataEnd());
      if (leaked) {
        await file.sync();
        ctx.warn(`gave back ${leaked} bytes of the VHD that no BAT entry references (left by an interrupted run, or padding)`);
      }
    }
    let done = 0;
    let batch: number[] = [];
    const commit = async (): Promise<void> => {
      if (batch.length === 0) return;
      if (ctx.release) {
        for (const r of this.slotRanges(batch)) file.release(r.start, r.end - r.start);
        await file.sync();
      }
      await this.layout.writeEntries(new Map(batch.map((i) => [i, NO_BLOCK])));
      await file.sync();
      batch = [];
    };
    let turns = 0;
    for (const r of ranges) {
      for (let i = Math.floor(r.start / bs); i * bs < r.end; i++) {
        if (this.layout.entry(i) !== NO_BLOCK) batch.push(i);
        done += Math.min(bs, this.virtualSize - i * bs);
        if (batch.length >= BLOCKS_PER_BATCH) {
          await commit();
          ctx.onProgress(done);
          if (ctx.signal?.aborted) return { discarded: done, kept: 0, aborted: true };
        }
        if (++turns % 4096 === 0) await yieldToEventLoop();
      }
    }
    await commit();
    ctx.onProgress(done);
    if (ctx.release) {
      this.zeroedInside = await punchInsideBlocks(this.layout, this.inside, this.unit);
      await file.sync();
    }
    // Bytes inside kept blocks that now read as zero count too (they lie outside the aligned plan).
    return { discarded: done + this.zeroedInside.total(), kept: 0, aborted: false };
  }

  /** A differencing disk: every block stays as it is; say how much of the plan that kept. */
  private keepAll(ranges: Extents, ctx: DiscardContext): DiscardResult {
    const bs = this.layout.blockSize;
    const zero = ctx.zero ?? new Extents();
    let allocated = 0;
    let zeroKept = 0;
    let kept = 0;
    for (const r of ranges) {
      for (let i = Math.floor(r.start / bs); i * bs < r.end; i++) {
        const start = i * bs;
        const end = Math.min(start + bs, this.virtualSize);
        const mustZero = zero.clip(start, end).total();
        zeroKept += mustZero;
        // An absent block shows the parent's data: free space the guest does not use, left alone.
        if (this.layout.entry(i) !== NO_BLOCK) allocated += end - start;
        kept += this.layout.entry(i) !== NO_BLOCK ? end - start : mustZero;
      }
    }
    ctx.onProgress(ranges.total());
    if (allocated) ctx.warn(`${allocated} bytes of free space kept: a differencing VHD cannot mark a block as zero (an absent block shows the parent disk); copy mode drops them`);
    if (zeroKept) ctx.warn(`${zeroKept} bytes of --zero devices were not zeroed: a differencing VHD cannot mark a block as zero; copy mode writes them as zeros`);
    return { discarded: 0, kept, aborted: false };
  }

  /** --zero edges: zeros written into allocated blocks; an unallocated block already reads as zero. */
  private async zeroInBlocks(ranges: Extents): Promise<void> {
    const { file, blockSize: bs, bitmapSize } = this.layout;
    let wrote = false;
    // What the discard punched inside kept blocks reads as zero already.
    for (const r of ranges.clip(0, this.virtualSize).subtract(this.zeroedInside)) {
      for (let pos = r.start; pos < r.end; ) {
        const i = Math.floor(pos / bs);
        const stop = Math.min(r.end, (i + 1) * bs);
        const e = this.layout.entry(i);
        for (let at = pos; e !== NO_BLOCK && at < stop; ) {
          const n = Math.min(ZERO_CHUNK, stop - at);
          await file.write(Buffer.alloc(n), e * SECTOR + bitmapSize + (at - i * bs));
          wrote = true;
          at += n;
        }
        pos = stop;
      }
    }
    if (wrote) await file.sync();
  }

  /** Host ranges of the given blocks' slots, merged where neighbouring. */
  private slotRanges(blocks: readonly number[]): Extents {
    return new Extents(blocks.map((i) => ({ start: this.layout.entry(i) * SECTOR, end: this.layout.entry(i) * SECTOR + this.layout.slot })));
  }

  /** Where the data area ends: before the footer at the end, or at the end when there is none. */
  private fileDataEnd(): number {
    return this.layout.file.size - (this.layout.tailFooter ? FOOTER_SIZE : 0);
  }

  private plan(): SlotPlan {
    return planSlotMoves(this.layout.slots(), { floor: this.layout.floor, align: SECTOR, pinned: this.layout.metadata });
  }

  /** The footer goes where the last block (or the metadata) will end; the file ends just after it. */
  private async plannedEnd(): Promise<number> {
    const m = this.layout.metadata.toArray();
    return Math.max(this.plan().end, m.length ? m[m.length - 1]!.end : 0) + FOOTER_SIZE;
  }

  private async compact(ctx: CompactContext): Promise<CompactResult> {
    const file = this.layout.file;
    const endBefore = file.size;
    // The discard before left the dropped slots as they were: where holes can be punched, they
    // (and any other space nobody references) read as zero before the first move.
    if (ctx.release && (await releaseUnreferenced(this.layout, this.layout.floor, this.fileDataEnd())) > 0) await file.sync();
    const plan = this.plan();
    const moved = await moveSlots(file, plan.moves, {
      batch: MOVES_PER_BATCH,
      signal: ctx.signal,
      onProgress: ctx.onProgress,
      repoint: async (moves) => {
        await this.layout.writeEntries(new Map(moves.map((m) => [m.key, m.to / SECTOR])));
        await file.sync();
        // The old slots are nobody's now: zero them at once rather than at the truncation.
        if (!ctx.release) return;
        for (const r of new Extents(moves.map((m) => ({ start: m.from, end: m.from + m.length })))) file.release(r.start, r.end - r.start);
        await file.sync();
      },
    });
    // Even after a stop: what is past the last referenced block goes (a few quick steps).
    const end = this.layout.dataEnd();
    const length = end + FOOTER_SIZE;
    if (end > file.size) throw new Error(`vpc: ${file.path}: a block ends at ${hex(end)}, past the end of the file`);
    const result: CompactResult = { endBefore, endAfter: file.size, moved: moved.moved, truncated: false, releasedByTruncation: 0, aborted: moved.aborted };
    if (file.size > length || !this.layout.tailFooter) {
      await file.write(this.layout.footer, end);
      await file.sync();
      if (file.size > length) {
        const before = await file.allocatedBytes();
        await file.truncate(length);
        await file.sync();
        result.releasedByTruncation = Math.max(0, before - (await file.allocatedBytes()));
        result.truncated = true;
      }
    }
    if (ctx.release && !moved.aborted) {
      // The blocks are where they stay: the guest's free space inside them, and anything left over.
      await punchInsideBlocks(this.layout, this.inside, this.unit);
      await releaseUnreferenced(this.layout, this.layout.floor, end);
      await file.sync();
    }
    result.endAfter = file.size;
    return result;
  }
}
