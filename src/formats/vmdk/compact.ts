/**
 * Compaction of a monolithicSparse VMDK after the discard: the grains highest in the file move
 * into free grain-aligned slots above the metadata area (`overHead`), then the file is cut after
 * its last used byte, never below the metadata. qemu appends new grains at the file's end rounded
 * up to a grain, so the slots stay aligned.
 *
 * Each move is copy-on-write (common/slot-moves.ts): copies made durable, then the GT and RGT
 * entries switched and made durable, and only then is the old slot out of use. A power cut leaves
 * every entry at its old grain or at its copy, never neither; a copy nobody points at yet is
 * given back by the next run. The file is truncated only once every entry pointing past the new
 * end is durable elsewhere. On a block device nothing is cut: the new end is reported and the
 * space above it released.
 */
import { Extents } from '../../io/extents.js';
import { moveSlots, planSlotMoves, type HostSlot, type SlotMove } from '../common/slot-moves.js';
import type { CompactContext, CompactResult, Compactor } from '../discard-types.js';
import { SECTOR } from './header.js';
import type { VmdkLayout } from './layout-discard.js';
import { releaseUnreferenced } from './release-discard.js';

/** Host bytes copied between two fdatasyncs. */
const BATCH_BYTES = 16 << 20;

interface Plan {
  /** `key`: the slot's index in the grain index. */
  moves: SlotMove[];
  end: number;
}

export class VmdkCompactor implements Compactor {
  constructor(private readonly layout: VmdkLayout) {}

  async plannedEnd(): Promise<number> {
    return this.plan().end;
  }

  /**
   * Slots below T, the end if every grain were packed, can stay where they are: only the slots
   * above it are handed to the planner (the rest count as pinned), so the plan costs objects for
   * the grains that move, not for every grain. A slot cut by the file's end never moves.
   */
  private plan(): Plan {
    const { grainBytes: g, floor, file, slots } = this.layout;
    const metaAbove = this.layout.metadata.clip(floor, Number.MAX_SAFE_INTEGER);
    const packedEnd = Math.ceil((floor + slots.count * g + metaAbove.total()) / g) * g;
    const movable: HostSlot[] = [];
    const staying: Array<{ start: number; end: number }> = [];
    for (const [index, , sector] of slots.ascending()) {
      const at = sector * SECTOR;
      if (at >= packedEnd && at + g <= file.size) movable.push({ offset: at, length: g, key: index });
      else staying.push({ start: at, end: Math.min(at + g, file.size) });
    }
    const pinned = metaAbove.union(new Extents(staying));
    const { moves } = planSlotMoves(movable, { floor, align: g, pinned });
    // The end: metadata, the slots that stay, the places taken.
    let end = Math.max(floor, this.layout.metadata.toArray().at(-1)?.end ?? 0);
    if (staying.length) end = Math.max(end, staying.at(-1)!.end);
    // The planner moves the highest slots first: the ones left are the lowest of `movable`.
    const highestLeft = movable[movable.length - moves.length - 1];
    if (highestLeft) end = Math.max(end, highestLeft.offset + g);
    for (const m of moves) end = Math.max(end, m.to + g);
    return { moves, end };
  }

  async compact(ctx: CompactContext): Promise<CompactResult> {
    const { file, floor } = this.layout;
    const endBefore = file.size;
    const result: CompactResult = { endBefore, endAfter: endBefore, moved: 0, truncated: false, releasedByTruncation: 0, aborted: false };
    const plan = this.plan();
    if (plan.moves.length) {
      const r = await moveSlots(file, plan.moves, {
        batch: Math.max(1, Math.floor(BATCH_BYTES / this.layout.grainBytes)),
        signal: ctx.signal,
        onProgress: ctx.onProgress,
        repoint: (batch) => this.repoint(batch),
      });
      result.moved = r.moved;
      if (r.aborted) return { ...result, aborted: true };
    }
    if (!file.isBlockDevice && file.size > plan.end) {
      const before = await file.allocatedBytes();
      await file.truncate(plan.end);
      await file.sync();
      result.releasedByTruncation = Math.max(0, before - (await file.allocatedBytes()));
      result.truncated = true;
    }
    // Free slots left below the end (and, on a device, everything above it).
    if (ctx.release) await releaseUnreferenced(this.layout, floor, file.size);
    result.endAfter = file.isBlockDevice ? Math.min(plan.end, file.size) : file.size;
    return result;
  }

  /** Switch the moved grains' GT and RGT entries to their copies and make that durable. */
  private async repoint(batch: readonly SlotMove[]): Promise<void> {
    const { slots } = this.layout;
    const changes = new Map<number, number>();
    for (const m of batch) changes.set(slots.entryAt(m.key), m.to / SECTOR);
    await this.layout.setEntries(changes);
    await this.layout.file.sync();
    for (const m of batch) slots.relocate(m.key, m.to / SECTOR);
  }
}
