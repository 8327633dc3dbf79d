/**
 * Compaction for formats whose map points at equal-sized slots of host space (VMDK grains, VHD
 * blocks with their bitmaps, VHDX payload blocks, qcow2 clusters): plan which slots move down into
 * free space, and move them copy-on-write: copy, make the copies durable, then let the format
 * repoint its map entries (and make that durable). Until a map entry is repointed the old slot is
 * what the guest reads; afterwards the new one holds the same bytes. A power cut at any moment
 * leaves one or the other referenced, never neither; at worst a copy nobody references yet.
 */
import type { BlockFile } from '../../io/file.js';
import { Extents } from '../../io/extents.js';
import { yieldToEventLoop } from '../discard-types.js';

/** A run of host bytes one map entry points at. `key` is the format's name for the entry. */
export interface HostSlot {
  offset: number;
  length: number;
  key: number;
}

export interface SlotMove {
  key: number;
  from: number;
  to: number;
  length: number;
}

export interface SlotPlan {
  moves: SlotMove[];
  /** The end of the last used byte once the moves are done (at least `floor`). */
  end: number;
}

export interface SlotPlanOptions {
  /** Nothing goes below this offset (the end of the fixed metadata: headers, tables). */
  floor: number;
  /** Slots start on multiples of this (512 for VHD, the grain for VMDK, 1 MiB for VHDX). */
  align: number;
  /** Host ranges above `floor` that are in use but never move (metadata in the data area). */
  pinned?: Extents;
}

/**
 * The highest slots each go to the lowest free aligned place below them, while there is one. All
 * slots must have the same length. Free space is what neither a slot nor `pinned` holds.
 */
export function planSlotMoves(slots: readonly HostSlot[], o: SlotPlanOptions): SlotPlan {
  if (slots.length === 0) return { moves: [], end: o.floor };
  const len = slots[0]!.length;
  if (slots.some((s) => s.length !== len)) throw new Error('planSlotMoves: slots of different lengths');
  const byOffset = [...slots].sort((a, b) => b.offset - a.offset);
  const top = byOffset[0]!.offset + len;
  const pinned = o.pinned ? o.pinned.clip(0, top) : new Extents();
  const used = pinned.union(new Extents(slots.map((s) => ({ start: s.offset, end: s.offset + len }))));
  const free = Extents.of(o.floor, top).subtract(used);

  // Free aligned places, lowest first; a place is only taken by a slot above it.
  const places: number[] = [];
  for (const r of free) {
    for (let p = Math.ceil(r.start / o.align) * o.align; p + len <= r.end && places.length < slots.length; p += Math.max(len, o.align)) places.push(p);
    if (places.length >= slots.length) break;
  }
  const moves: SlotMove[] = [];
  for (const s of byOffset) {
    const to = places[moves.length];
    if (to === undefined || to + len > s.offset) break;
    moves.push({ key: s.key, from: s.offset, to, length: len });
  }
  // The end: the highest slot that stayed, or the highest place taken, or pinned space.
  let end = Math.max(o.floor, pinned.isEmpty ? 0 : pinned.toArray().at(-1)!.end);
  const stayed = byOffset[moves.length];
  if (stayed) end = Math.max(end, stayed.offset + len);
  for (const m of moves) end = Math.max(end, m.to + len);
  return { moves, end };
}

export interface MoveSlotsOptions {
  /** Moves per batch: copies, one fdatasync, then `repoint`. */
  batch: number;
  signal?: AbortSignal;
  onProgress?(done: number, total: number): void;
  /**
   * Point the map entries of `moves` at their new slots and make that durable (the format writes
   * its entries and calls sync). Called once per batch, after the copies are durable.
   */
  repoint(moves: readonly SlotMove[]): Promise<void>;
}

/** Run the moves in batches; returns the bytes moved and whether it stopped early (consistent either way). */
export async function moveSlots(file: BlockFile, moves: readonly SlotMove[], o: MoveSlotsOptions): Promise<{ moved: number; aborted: boolean }> {
  const total = moves.reduce((a, m) => a + m.length, 0);
  let moved = 0;
  for (let i = 0; i < moves.length; i += o.batch) {
    if (o.signal?.aborted) return { moved, aborted: true };
    const batch = moves.slice(i, i + o.batch);
    for (const m of batch) await file.copyWithin(m.from, m.to, m.length);
    await file.sync();
    await o.repoint(batch);
    for (const m of batch) moved += m.length;
    o.onProgress?.(moved, total);
    await yieldToEventLoop();
  }
  return { moved, aborted: false };
}
