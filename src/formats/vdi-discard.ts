/**
 * In-place discard for dynamic VDI images. A block wholly inside the discard ranges becomes
 * "discarded" (0xFFFFFFFE: reads as zero) in the block map, and its slot in the data area is
 * punched. VDI allocates new blocks at slot `blocks_allocated`, and qemu-img check wants that
 * count to equal the blocks in use, so the slots are then compacted: the last used slots move
 * into the freed ones and the file is truncated.
 * Order (each step flushed): block map entries -> punch -> for each move: copy the slot, then
 * repoint its block map entry -> blocks_allocated in the header -> truncate. A crash leaves at
 * worst unreferenced slots below `blocks_allocated` (new blocks still go past every used slot).
 */
import type { BlockFile } from '../io/file.js';
import { CorruptError, SparsifyError, hex } from '../io/errors.js';
import type { Extents } from '../io/extents.js';
import * as sys from '../io/syscalls.js';
import {
  discardUnsupported,
  UNSUPPORTED_ERRNOS,
  yieldToEventLoop,
  type DiscardBackend,
  type DiscardContext,
  type DiscardResult,
} from './discard-types.js';

const SIGNATURE = 0xbeda107f;
const TYPE_DYNAMIC = 1;
const DISCARDED = 0xfffffffe;
const COPY_CHUNK = 1 << 20;

interface VdiGeometry {
  offsetBmap: number;
  offsetData: number;
  diskSize: number;
  blockSize: number;
  blockExtra: number;
  blocks: number;
  blocksAllocated: number;
}

export class VdiDiscarder implements DiscardBackend {
  private readonly slot: number;

  private constructor(
    private readonly file: BlockFile,
    private readonly g: VdiGeometry,
    private readonly bmap: Uint32Array,
  ) {
    this.slot = g.blockSize + g.blockExtra;
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
      blocksAllocated: h.readUInt32LE(0x184),
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
    const owner = new Map<number, number>();
    for (let i = 0; i < g.blocks; i++) {
      const e = raw.readUInt32LE(i * 4);
      bmap[i] = e;
      if (e >= DISCARDED) continue;
      if (e >= g.blocksAllocated) throw new CorruptError(`vdi: ${p}: block map entry ${i} points to slot ${e}, past blocks_allocated (${g.blocksAllocated})`);
      if (owner.has(e)) throw new CorruptError(`vdi: ${p}: blocks ${owner.get(e)} and ${i} share slot ${e}`);
      owner.set(e, i);
    }
    return new VdiDiscarder(file, g, bmap);
  }

  get description(): string {
    return `vdi, ${this.g.blockSize}-byte blocks become discarded`;
  }

  align(ranges: Extents): Extents {
    return ranges.clip(0, this.g.diskSize).alignInward(this.g.blockSize);
  }

  async probe(): Promise<void> {
    const at = Math.ceil(this.file.size / 4096) * 4096;
    try {
      this.file.punchHole(at, 4096);
    } catch (e) {
      const code = e instanceof sys.SyscallError ? e.code : undefined;
      if (code && UNSUPPORTED_ERRNOS.has(code)) throw discardUnsupported(`${this.file.path}: the host filesystem cannot punch holes (fallocate: ${code})`);
      throw e;
    }
  }

  private slotOffset(s: number): number {
    return this.g.offsetData + s * this.slot;
  }

  private async writeEntry(block: number, value: number): Promise<void> {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(value >>> 0);
    await this.file.write(b, this.g.offsetBmap + block * 4);
  }

  async discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
    const bs = this.g.blockSize;
    const freed: number[] = [];
    let discarded = 0;
    for (const r of ranges) {
      for (let i = r.start / bs; i < r.end / bs; i++) {
        const e = this.bmap[i]!;
        if (e < DISCARDED) {
          freed.push(e);
          this.bmap[i] = DISCARDED;
          await this.writeEntry(i, DISCARDED);
        }
        discarded += Math.min(bs, this.g.diskSize - i * bs);
      }
    }
    if (freed.length) {
      await this.file.sync();
      for (const s of freed) this.file.punchHole(this.slotOffset(s), this.slot);
    }
    ctx.onProgress(discarded);
    // Stopping here is safe too; compaction is what makes the image tidy again.
    if (!ctx.signal?.aborted) await this.compact(ctx.signal);
    return { discarded, kept: 0, aborted: ctx.signal?.aborted ?? false };
  }

  /** Move the last used slots into free ones below the new count, then shrink the count and the file. */
  private async compact(signal: AbortSignal | undefined): Promise<void> {
    const blockOf = new Map<number, number>();
    for (let i = 0; i < this.bmap.length; i++) if (this.bmap[i]! < DISCARDED) blockOf.set(this.bmap[i]!, i);
    const used = blockOf.size;
    const holes: number[] = [];
    for (let s = 0; s < used; s++) if (!blockOf.has(s)) holes.push(s);
    const tail = [...blockOf.keys()].filter((s) => s >= used).sort((a, b) => b - a);
    const buf = Buffer.allocUnsafe(Math.min(COPY_CHUNK, this.slot));
    for (let k = 0; k < tail.length; k++) {
      // Stopping between moves is safe: blocks_allocated still lies past every used slot.
      if (signal?.aborted) return;
      const from = tail[k]!;
      const to = holes[k]!;
      const block = blockOf.get(from)!;
      // The destination is unreferenced: make it a hole, then copy only the non-zero chunks.
      this.file.punchHole(this.slotOffset(to), this.slot);
      for (let off = 0; off < this.slot; off += buf.length) {
        const n = Math.min(buf.length, this.slot - off);
        const piece = buf.subarray(0, n);
        await this.file.readZeroPadded(piece, this.slotOffset(from) + off);
        if (piece.some((x) => x !== 0)) await this.file.write(piece, this.slotOffset(to) + off);
      }
      await this.file.sync();
      await this.writeEntry(block, to);
      await this.file.sync();
      this.bmap[block] = to;
      await yieldToEventLoop();
    }
    if (used !== this.g.blocksAllocated) {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(used);
      await this.file.write(b, 0x184);
      await this.file.sync();
      this.g.blocksAllocated = used;
    }
    const end = this.slotOffset(used);
    if (this.file.size > end) await this.file.truncate(end);
  }
}
