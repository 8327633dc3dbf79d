/**
 * In-place discard for VHDX images (MS-VHDX; qemu block/vhdx.c, vhdx-log.c). A payload block
 * wholly inside the discard ranges becomes PAYLOAD_BLOCK_ZERO with no file offset: the
 * specification makes ZERO read as zeros for every reader (UNMAPPED may read as the old data or
 * anything else, which --zero devices cannot have), and qemu writes ZERO entries with a zero
 * offset too (Hyper-V refuses one with an offset). Partial blocks are kept as they are.
 *
 * Order, per batch of BAT sectors (as many as one log entry carries):
 *   1. the changed BAT sectors as one log entry, fdatasync;
 *   2. the BAT sectors in place, fdatasync;
 *   3. (when releasing) the freed blocks punched out of the file or discarded on the device.
 * A log left pending by a power cut is replayed first (in memory at open, on disk at the first
 * write). The phase ends with the log retired (zero log GUID) and, when releasing, any space no
 * entry references punched (a slot leaked by a cut between 2 and 3). Compaction: compact.ts.
 * A fixed VHDX (blocks must stay allocated) keeps its BAT: fixed-discard.ts punches inside blocks.
 */
import { Extents } from '../../io/extents.js';
import { BlockMappedImage } from '../common/blockimage.js';
import type { DiskImage } from '../types.js';
import {
  yieldToEventLoop, type CompactContext, type CompactResult, type Compactor, type DiscardBackend, type DiscardContext, type DiscardResult,
} from '../discard-types.js';
import { PAYLOAD_NOT_PRESENT, PAYLOAD_ZERO } from './image.js';
import { VhdxUpdater, writeZerosInBlocks } from './updater.js';
import { releaseData } from './host-space.js';
import { VhdxFixedDiscarder } from './fixed-discard.js';
import { compactVhdx, plannedVhdxEnd } from './compact.js';

/** Blocks looked at between two checks of the abort signal and the event loop. */
const BLOCKS_PER_YIELD = 4096;
/** Freed blocks per batch at most (their slots are released after each batch). */
const FREED_PER_BATCH = 4096;

export async function openVhdxDiscarder(image: DiskImage): Promise<DiscardBackend> {
  if (!(image instanceof BlockMappedImage) || image.format !== 'vhdx') throw new Error('vhdx image is not block-mapped');
  const u = await VhdxUpdater.open(image.file);
  return u.layout.md.leaveBlocksAllocated ? new VhdxFixedDiscarder(u) : new VhdxDiscarder(u);
}

class VhdxDiscarder implements DiscardBackend, Compactor {
  constructor(private readonly u: VhdxUpdater) {}

  get compactor(): Compactor {
    return this;
  }

  get granularity(): number {
    return this.u.blockSize;
  }

  get description(): string {
    return `vhdx, ${this.u.blockSize}-byte blocks become zero blocks (BAT updated through the log)`;
  }

  /** Whole blocks; the last, partial block counts as whole when the range reaches the end of the disk. */
  align(ranges: Extents): Extents {
    const size = this.u.virtualSize;
    const bs = this.u.blockSize;
    const inward = ranges.clip(0, size).alignInward(bs);
    const tailStart = Math.floor(size / bs) * bs;
    if (tailStart < size && ranges.clip(tailStart, size).total() === size - tailStart) return inward.union(Extents.of(tailStart, size));
    return inward;
  }

  canRelease(): Promise<boolean> {
    return this.u.file.canRelease();
  }

  async discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
    const { bat, blockSize: bs, virtualSize } = this.u;
    let discarded = 0;
    let done = 0;
    let freed: Array<{ start: number; end: number }> = [];
    let seen = 0;
    const commit = async (): Promise<void> => {
      if (bat.dirtySectors > 0) {
        await this.u.begin({ dataChanges: true });
        await this.u.commitBat();
        // A stale offset in another entry may still name that space: it stays.
        if (ctx.release) for (const r of new Extents(freed).subtract(this.u.usedSpace())) releaseData(this.u.file, r.start, r.end);
      }
      freed = [];
      ctx.onProgress(done);
    };
    for (const r of ranges) {
      for (let i = Math.floor(r.start / bs); i * bs < r.end; i++) {
        const len = Math.min(bs, virtualSize - i * bs);
        const e = bat.entryOf(i);
        const st = bat.state(e);
        const host = bat.host(e);
        // Already zero with no space held (NOT_PRESENT reads as zero without a parent): nothing to change.
        if (!(st === PAYLOAD_NOT_PRESENT || (st === PAYLOAD_ZERO && host === 0))) {
          bat.set(e, PAYLOAD_ZERO, 0);
          if (host !== 0) freed.push({ start: host, end: host + bs });
        }
        discarded += len;
        done += len;
        if (bat.dirtySectors >= this.u.log.capacity || freed.length >= FREED_PER_BATCH) await commit();
        if (++seen % BLOCKS_PER_YIELD === 0) {
          if (ctx.signal?.aborted) return this.stop(commit, discarded, true);
          ctx.onProgress(done);
          await yieldToEventLoop();
        }
      }
    }
    return this.stop(commit, discarded, false, ctx.release);
  }

  /** Commit what is pending, retire the log (replaying one left pending), release leaks. */
  private async stop(commit: () => Promise<void>, discarded: number, aborted: boolean, release = false): Promise<DiscardResult> {
    await commit();
    await this.u.finish();
    if (release && !aborted) this.u.releaseFree(this.u.file.size);
    return { discarded, kept: 0, aborted };
  }

  writeZeros(ranges: Extents): Promise<void> {
    return writeZerosInBlocks(this.u, ranges);
  }

  plannedEnd(): Promise<number> {
    return Promise.resolve(plannedVhdxEnd(this.u));
  }

  compact(ctx: CompactContext): Promise<CompactResult> {
    return compactVhdx(this.u, ctx);
  }
}
