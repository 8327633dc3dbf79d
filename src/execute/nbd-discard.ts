/**
 * In-place discard for a raw NBD export (the guest's view served as is): the free ranges that
 * block status shows as data get WRITE_ZEROES without NO_HOLE, so a server that can free space
 * does (qemu-nbd --discard=unmap), or TRIM where the server offers no zeroing. Ranges of --zero
 * devices must read as zero afterwards: with TRIM alone they are written with zeros. FLUSH at the
 * end, where a file would get its fdatasync. Whether space really came back is for block status
 * before and after to say (operations/in-place.ts), never assumed from a successful reply.
 */
import type { Extents } from '../io/extents.js';
import type { NbdFile } from '../io/nbd/nbd-file.js';
import { yieldToEventLoop, type DiscardBackend, type DiscardContext, type DiscardResult } from '../formats/discard-types.js';

/** Requests queued between two turns of the event loop (so ^C and progress are seen). */
const OPS_PER_TURN = 64;
const ZERO_CHUNK = 1 << 20;
/** Plan ranges are aligned to this at least: smaller pieces are not worth a request. */
const MIN_UNIT = 4096;

export class NbdDiscarder implements DiscardBackend {
  constructor(private readonly file: NbdFile) {}

  private get unit(): number {
    return Math.max(MIN_UNIT, this.file.releaseUnit);
  }

  get description(): string {
    const how = this.file.releaseZeroes ? 'WRITE_ZEROES' : 'TRIM';
    return `NBD export (${how} in ${this.unit}-byte blocks)`;
  }

  align(ranges: Extents): Extents {
    return ranges.clip(0, this.file.size).alignInward(this.unit);
  }

  canRelease(): Promise<boolean> {
    return this.file.canRelease();
  }

  async writeZeros(ranges: Extents): Promise<void> {
    for (const r of ranges) {
      for (let pos = r.start; pos < r.end; pos += ZERO_CHUNK) await this.file.write(Buffer.alloc(Math.min(ZERO_CHUNK, r.end - pos)), pos);
    }
    await this.file.sync();
  }

  async discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
    let done = 0;
    let ops = 0;
    const zeroByWrite = !this.file.releaseZeroes && ctx.zero ? ranges.intersect(ctx.zero) : undefined;
    for (const r of ranges) {
      for (let pos = r.start; pos < r.end; ) {
        if (ctx.signal?.aborted) {
          await this.file.sync();
          return { discarded: done, kept: 0, aborted: true };
        }
        const data = this.file.seekData(pos);
        if (data < 0 || data >= r.end) break;
        const hole = Math.min(r.end, this.file.seekHole(data));
        if (ctx.release) this.file.release(data, hole - data);
        pos = hole;
        if (++ops % OPS_PER_TURN === 0) await yieldToEventLoop();
      }
      done += r.end - r.start;
      ctx.onProgress(done);
    }
    if (zeroByWrite && !zeroByWrite.isEmpty) {
      await this.writeZeros(zeroByWrite);
      return { discarded: done, kept: 0, aborted: false };
    }
    await this.file.sync();
    return { discarded: done, kept: 0, aborted: false };
  }
}
