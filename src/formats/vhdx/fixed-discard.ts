/**
 * In-place discard for a VHDX whose file parameters say LeaveBlockAllocated (a fixed VHDX, as
 * qemu-img and Hyper-V make them): its blocks must stay allocated, so the BAT does not change.
 * Free space is released inside the blocks instead, as on a raw file: holes punched (reading as
 * zeros), or discard on a block device, where --zero devices get written zeros (a discarded range
 * may read as anything). There is nothing to compact: every block keeps its slot.
 * A pending log is replayed (and retired) first; the header gets a new DataWriteGuid before the
 * first release, as for any change the guest can see.
 */
import { Extents } from '../../io/extents.js';
import { yieldToEventLoop, type DiscardBackend, type DiscardContext, type DiscardResult } from '../discard-types.js';
import { LOG_SECTOR } from './log-format.js';
import { writeZerosInBlocks, type VhdxUpdater } from './updater.js';
import { releaseData, writeZeroRange } from './host-space.js';

export class VhdxFixedDiscarder implements DiscardBackend {
  constructor(private readonly u: VhdxUpdater) {}

  get description(): string {
    return 'vhdx with blocks kept allocated (fixed): free space released inside its blocks';
  }

  align(ranges: Extents): Extents {
    return ranges.clip(0, this.u.virtualSize).alignInward(LOG_SECTOR);
  }

  canRelease(): Promise<boolean> {
    return this.u.file.canRelease();
  }

  async discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
    const { bat, blockSize: bs, file } = this.u;
    const zero = file.isBlockDevice && ctx.zero ? ctx.zero : new Extents();
    let done = 0;
    for (const r of ranges) {
      for (let pos = r.start; pos < r.end; ) {
        if (ctx.signal?.aborted) {
          await this.u.finish();
          return { discarded: done, kept: 0, aborted: true };
        }
        const i = Math.floor(pos / bs);
        const stop = Math.min(r.end, (i + 1) * bs);
        const host = this.u.dataSlot(bat.entryOf(i));
        if (host !== undefined && ctx.release) {
          await this.u.dataWillChange();
          const piece = Extents.of(pos, stop);
          for (const z of piece.intersect(zero)) await writeZeroRange(file, host + z.start - i * bs, z.end - z.start);
          for (const g of piece.subtract(zero)) releaseData(file, host + g.start - i * bs, host + g.end - i * bs);
        }
        done += stop - pos;
        pos = stop;
        ctx.onProgress(done);
        await yieldToEventLoop();
      }
    }
    await file.sync();
    await this.u.finish();
    return { discarded: done, kept: 0, aborted: false };
  }

  writeZeros(ranges: Extents): Promise<void> {
    return writeZerosInBlocks(this.u, ranges);
  }
}
