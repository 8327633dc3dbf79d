/**
 * Compaction of a VHDX file in place: the payload blocks lying highest move into the lowest free
 * 1 MiB-aligned slots below them (common/slot-moves.ts), then the file is cut after the last used
 * MiB; never below the header section, the log, the BAT, the metadata or any other region, nor
 * below a sector-bitmap block or a block that keeps an offset in another state (those never move).
 *
 * Order, per batch of moves:
 *   1. copy each block to its new slot, fdatasync (nothing points there yet: a cut leaves a leak);
 *   2. the BAT entries repointed through the log (entry, fdatasync, BAT sectors, fdatasync): from
 *      the entry on, a cut is repaired by replaying it;
 *   3. (when releasing) old slots that stay below the new end are punched.
 * Then the log is retired (zero log GUID in both headers), and only then is the file truncated:
 * a shorter file must never meet a log whose FlushedFileOffset is past its end.
 */
import { Extents } from '../../io/extents.js';
import type { CompactContext, CompactResult } from '../discard-types.js';
import { moveSlots, planSlotMoves, type HostSlot, type SlotPlan } from '../common/slot-moves.js';
import { PAYLOAD_FULLY_PRESENT } from './image.js';
import { MiB } from './structures.js';
import type { VhdxUpdater } from './updater.js';
import { releaseData } from './host-space.js';

/** A batch (one log entry, three fdatasyncs) copies at most this much... */
const BATCH_BYTES = 256 * MiB;
/** ...and the moves go in about this many batches (progress, and a prompt stop on ^C). */
const BATCHES = 8;

function lastEnd(e: Extents): number {
  return e.isEmpty ? 0 : e.toArray().at(-1)!.end;
}

/** The moves and the new end, from the BAT as it is now. */
function plan(u: VhdxUpdater): SlotPlan & { slots: HostSlot[] } {
  const slots: HostSlot[] = [];
  const blocks = Math.ceil(u.virtualSize / u.blockSize);
  for (let i = 0; i < blocks; i++) {
    const e = u.bat.entryOf(i);
    const host = u.dataSlot(e);
    if (host !== undefined) slots.push({ offset: host, length: u.blockSize, key: e });
  }
  const pinned = u.regions().union(u.pinnedBlocks());
  const p = planSlotMoves(slots, { floor: MiB, align: MiB, pinned });
  return { ...p, end: Math.ceil(Math.max(p.end, lastEnd(pinned)) / MiB) * MiB, slots };
}

export function plannedVhdxEnd(u: VhdxUpdater): number {
  return plan(u).end;
}

export async function compactVhdx(u: VhdxUpdater, ctx: CompactContext): Promise<CompactResult> {
  const file = u.file;
  const p = plan(u);
  const endBefore = file.isBlockDevice ? lastEnd(u.usedSpace()) : u.fileEnd;
  const result: CompactResult = { endBefore, endAfter: endBefore, moved: 0, truncated: false, releasedByTruncation: 0, aborted: false };

  if (p.moves.length > 0) {
    await u.begin({ dataChanges: false });
    // qemu once wrote files ending inside their last block: give every block its whole slot to copy.
    const top = Math.max(...p.slots.map((s) => s.offset + s.length));
    if (!file.isBlockDevice && top > file.size) {
      await file.truncate(top);
      await file.sync();
    }
  }
  const r = await moveSlots(file, p.moves, {
    batch: Math.max(1, Math.min(Math.ceil(p.moves.length / BATCHES), Math.floor(BATCH_BYTES / u.blockSize))),
    signal: ctx.signal,
    onProgress: ctx.onProgress,
    repoint: async (batch) => {
      for (const m of batch) u.bat.set(m.key, PAYLOAD_FULLY_PRESENT, m.to);
      await u.commitBat();
      if (!ctx.release) return;
      const old = new Extents(batch.map((m) => ({ start: m.from, end: m.from + m.length }))).clip(0, p.end).subtract(u.usedSpace());
      for (const r of old) releaseData(file, r.start, r.end);
    },
  });
  result.moved = r.moved;
  await u.finish();
  if (r.aborted) return { ...result, aborted: true };

  // A device keeps its size: what lies past the new end is free too (the volume can be reduced to it).
  if (ctx.release) u.releaseFree(file.isBlockDevice ? file.size : p.end);
  if (file.isBlockDevice) {
    result.endAfter = p.end;
    return result;
  }
  if (file.size > p.end) {
    const before = await file.allocatedBytes();
    await file.truncate(p.end);
    await file.sync();
    result.releasedByTruncation = Math.max(0, before - (await file.allocatedBytes()));
    result.truncated = true;
  }
  result.endAfter = file.size;
  return result;
}
