/**
 * In-place discard and compaction for dynamic VDI images. A block wholly inside the discard ranges
 * becomes "discarded" (0xFFFFFFFE: reads as zero) in the block map. VDI has no free-slot list: new
 * blocks go at slot `blocks_allocated`, and qemu-img check wants that count to equal the blocks
 * in use, so the used slots must stay dense: compaction always follows (it is `required`).
 *
 * Order, made so that every fsync'd state is clean and only one fsync epoch may not be:
 *   1. copy each kept block in a slot at or past the new count into a slot below it that is
 *      unreferenced or held by a block being discarded (free space in the guest, so what it reads
 *      meanwhile does not matter); fdatasync;
 *   2. in one epoch: every changed block-map entry (discarded, moved) and `blocks_allocated`;
 *      fdatasync. A crash inside this epoch can leave the map and the count out of step, which
 *      qemu-img check reports; the data is whole either way, and a rerun repairs it;
 *   3. truncate the file after the last used slot; fdatasync.
 * A rerun on a state left inside step 2 accepts entries past `blocks_allocated` and a slot shared
 * by a block the guest does not use, and rebuilds the map.
 */
import type { BlockFile } from '../io/file.js';
import { CorruptError, SparsifyError, hex } from '../io/errors.js';
import type { Extents } from '../io/extents.js';
import {
  yieldToEventLoop,
  type CompactContext,
  type CompactResult,
  type Compactor,
  type DiscardBackend,
  type DiscardContext,
  type DiscardResult,
} from './discard-types.js';
import { writeU32Entries } from './common/runs.js';

const SIGNATURE = 0xbeda107f;
const TYPE_DYNAMIC = 1;
const DISCARDED = 0xfffffffe;
const COPY_CHUNK = 1 << 20;
/** Slots copied between two fdatasyncs in step 1. */
const MOVES_PER_SYNC = 64;
const BLOCKS_ALLOCATED_AT = 0x184;

interface VdiGeometry {
  offsetBmap: number;
  offsetData: number;
  diskSize: number;
  blockSize: number;
  blockExtra: number;
  blocks: number;
  blocksAllocated: number;
}

export class VdiDiscarder implements DiscardBackend, Compactor {
  readonly required = true;
  private readonly slot: number;
  /** Blocks the discard drops (their map entries change in step 2). */
  private readonly dropped = new Set<number>();

  private constructor(
    private readonly file: BlockFile,
    private readonly g: VdiGeometry,
    /** The block map as on disk until step 2. */
    private readonly bmap: Uint32Array,
  ) {
    this.slot = g.blockSize + g.blockExtra;
  }

  get compactor(): Compactor {
    return this;
  }

  static async open(file: BlockFile): Promise<VdiDiscarder> {
    const p = file.path;
    const h = Buffer.alloc(512);
    await file.readExact(h, 0, 'vdi header');
    if (h.readUInt32LE(0x40) !== SIGNATURE) throw new CorruptError(`vdi: ${p}: bad signature at 0x40`);
    if (h.readUInt32LE(0x4c) !== TYPE_DYNAMIC) throw new SparsifyError(`${p}: only dynamic VDI images can be sparsified in place (this one is preallocated); use copy mode`);
    const g: VdiGeometry = {
      offsetBmap: h.readUInt32LE(0x154),
      offsetData: h.readUInt32LE(0x158),
      diskSize: Number(h.readBigUInt64LE(0x170)),
      blockSize: h.readUInt32LE(0x178),
      blockExtra: h.readUInt32LE(0x17c),
      blocks: h.readUInt32LE(0x180),
      blocksAllocated: h.readUInt32LE(BLOCKS_ALLOCATED_AT),
    };
    const bs = g.blockSize;
    if (bs < 512 || bs > 1 << 28 || (bs & (bs - 1)) !== 0) throw new CorruptError(`vdi: ${p}: block size ${bs} at 0x178 is invalid`);
    if (g.offsetBmap < 0x200 || g.offsetBmap + g.blocks * 4 > Math.min(file.size, g.offsetData)) {
      throw new CorruptError(`vdi: ${p}: block map at ${hex(g.offsetBmap)} (${g.blocks} entries) overlaps the data area or the end of file`);
    }
    if (g.blocks * bs < g.diskSize) throw new CorruptError(`vdi: ${p}: ${g.blocks} blocks cannot hold disk size ${g.diskSize}`);
    const raw = Buffer.alloc(g.blocks * 4);
    await file.readExact(raw, g.offsetBmap, 'vdi block map');
    const bmap = new Uint32Array(g.blocks);
    // Slots that fit in the file: an entry may point past blocks_allocated after an interrupted run.
    const slotsInFile = Math.floor(Math.max(0, file.size - g.offsetData) / (bs + g.blockExtra));
    for (let i = 0; i < g.blocks; i++) {
      const e = raw.readUInt32LE(i * 4);
      bmap[i] = e;
      if (e < DISCARDED && e >= Math.max(slotsInFile, g.blocksAllocated)) {
        throw new CorruptError(`vdi: ${p}: block map entry ${i} points to slot ${e}, past the end of the file (${slotsInFile} slots)`);
      }
    }
    return new VdiDiscarder(file, g, bmap);
  }

  get granularity(): number {
    return this.g.blockSize;
  }

  get description(): string {
    return `vdi, ${this.g.blockSize}-byte blocks become discarded, used slots kept dense`;
  }

  align(ranges: Extents): Extents {
    return ranges.clip(0, this.g.diskSize).alignInward(this.g.blockSize);
  }

  canRelease(): Promise<boolean> {
    return this.file.canRelease();
  }

  private slotOffset(s: number): number {
    return this.g.offsetData + s * this.slot;
  }

  /** Nothing is written here: the map changes in one epoch with the moves (see the top). */
  async discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
    const bs = this.g.blockSize;
    let discarded = 0;
    for (const r of ranges) {
      for (let i = r.start / bs; i < r.end / bs; i++) {
        if (this.bmap[i]! < DISCARDED) this.dropped.add(i);
        discarded += Math.min(bs, this.g.diskSize - i * bs);
      }
    }
    ctx.onProgress(discarded);
    return { discarded, kept: 0, aborted: false };
  }

  /** The slot each kept block lives in, refusing two kept blocks in one slot. */
  private keptSlots(): Map<number, number> {
    const blockOf = new Map<number, number>();
    for (let i = 0; i < this.bmap.length; i++) {
      const s = this.bmap[i]!;
      if (s >= DISCARDED || this.dropped.has(i)) continue;
      const other = blockOf.get(s);
      if (other !== undefined) {
        throw new CorruptError(`vdi: ${this.file.path}: blocks ${other} and ${i} share slot ${s} and the guest uses both; repair it with VirtualBox or copy mode`);
      }
      blockOf.set(s, i);
    }
    return blockOf;
  }

  private endFor(used: number): number {
    return this.slotOffset(used);
  }

  async plannedEnd(): Promise<number> {
    return this.endFor(this.keptSlots().size);
  }

  async compact(ctx: CompactContext): Promise<CompactResult> {
    const blockOf = this.keptSlots();
    let slotsBefore = this.g.blocksAllocated;
    for (const s of blockOf.keys()) slotsBefore = Math.max(slotsBefore, s + 1);
    const endBefore = this.file.isBlockDevice ? this.endFor(slotsBefore) : this.file.size;
    const used = blockOf.size;
    const holes: number[] = [];
    for (let s = 0; s < used; s++) if (!blockOf.has(s)) holes.push(s);
    const tail = [...blockOf.keys()].filter((s) => s >= used).sort((a, b) => a - b);
    const result: CompactResult = { endBefore, endAfter: endBefore, moved: 0, truncated: false, releasedByTruncation: 0, aborted: false };

    // 1. Copies into free slots; the map still points at the old ones.
    const total = tail.length * this.slot;
    const moves: Array<{ block: number; to: number }> = [];
    for (let k = 0; k < tail.length; k++) {
      // Stopping here changes nothing the guest uses: the map is untouched so far.
      if (ctx.signal?.aborted) return { ...result, aborted: true };
      const from = tail[k]!;
      const to = holes[k]!;
      await this.copySlot(from, to, ctx.release);
      moves.push({ block: blockOf.get(from)!, to });
      result.moved += this.slot;
      ctx.onProgress?.(result.moved, total);
      if (moves.length % MOVES_PER_SYNC === 0) await this.file.sync();
      await yieldToEventLoop();
    }
    await this.file.sync();

    // 2. One epoch: the map entries and the count.
    const changed = new Map<number, number>();
    for (const b of this.dropped) changed.set(b, DISCARDED);
    for (const m of moves) changed.set(m.block, m.to);
    await this.writeEntries(changed);
    if (used !== this.g.blocksAllocated) {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(used);
      await this.file.write(b, BLOCKS_ALLOCATED_AT);
    }
    await this.file.sync();
    for (const [block, v] of changed) this.bmap[block] = v;
    this.dropped.clear();
    this.g.blocksAllocated = used;

    // 3. Shorten the file after the last used slot (a device keeps its size: its tail is released).
    const end = this.endFor(used);
    if (this.file.isBlockDevice) {
      if (ctx.release && this.file.size > end) this.file.release(end, this.file.size - end);
    } else if (this.file.size > end) {
      const before = await this.file.allocatedBytes();
      await this.file.truncate(end);
      await this.file.sync();
      result.releasedByTruncation = Math.max(0, before - (await this.file.allocatedBytes()));
      result.truncated = true;
    }
    result.endAfter = this.file.isBlockDevice ? end : this.file.size;
    return result;
  }

  /**
   * Copy slot `from` into slot `to`. Where holes can be punched, the destination becomes a hole
   * and only the non-zero chunks are written (so zeros stay unallocated); otherwise the kernel
   * copies the whole slot.
   */
  private async copySlot(from: number, to: number, release: boolean): Promise<void> {
    if (!release) {
      await this.file.copyWithin(this.slotOffset(from), this.slotOffset(to), this.slot);
      return;
    }
    this.file.release(this.slotOffset(to), this.slot);
    const buf = Buffer.allocUnsafe(Math.min(COPY_CHUNK, this.slot));
    for (let off = 0; off < this.slot; off += buf.length) {
      const piece = buf.subarray(0, Math.min(buf.length, this.slot - off));
      await this.file.readZeroPadded(piece, this.slotOffset(from) + off);
      if (piece.some((x) => x !== 0)) await this.file.write(piece, this.slotOffset(to) + off);
    }
  }

  /** Write changed map entries, one write per run of neighbouring entries. */
  private async writeEntries(changed: Map<number, number>): Promise<void> {
    const blocks = [...changed.keys()].sort((a, b) => a - b);
    await writeU32Entries(this.file, this.g.offsetBmap, blocks, (b) => changed.get(b)!, 'le');
  }
}
