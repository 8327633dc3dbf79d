/**
 * In-place discard for raw images: hole punching (fallocate PUNCH_HOLE | KEEP_SIZE) in a regular
 * file, over the ranges that are data now (SEEK_DATA/SEEK_HOLE), so the cost follows the file's
 * allocation and not its size; BLKDISCARD on a block device, aligned to its discard granularity.
 */
import { statfs } from 'node:fs/promises';
import type { BlockFile } from '../io/file.js';
import { deviceDiscardInfo } from '../io/device-info.js';
import { Extents } from '../io/extents.js';
import * as sys from '../io/syscalls.js';
import {
  discardUnsupported,
  UNSUPPORTED_ERRNOS,
  yieldToEventLoop,
  type DiscardBackend,
  type DiscardContext,
  type DiscardResult,
} from './discard-types.js';

/** Syscalls between two turns of the event loop (so ^C is seen promptly). */
const OPS_PER_TURN = 256;
/** A device discard is cut into pieces of this size, for progress and ^C. */
const DEVICE_PIECE = 1 << 30;

function errnoOf(e: unknown): string | undefined {
  return e instanceof sys.SyscallError ? e.code : undefined;
}

export class RawFileDiscarder implements DiscardBackend {
  private constructor(
    private readonly file: BlockFile,
    private readonly blockSize: number,
  ) {}

  static async open(file: BlockFile): Promise<RawFileDiscarder> {
    const st = await statfs(file.path);
    // bsize is the allocation unit hole punching works in; anything odd falls back to 4 KiB.
    const bs = Number(st.bsize);
    return new RawFileDiscarder(file, bs >= 512 && (bs & (bs - 1)) === 0 && bs <= 1 << 20 ? bs : 4096);
  }

  get description(): string {
    return `raw file (holes punched in ${this.blockSize}-byte blocks)`;
  }

  align(ranges: Extents): Extents {
    return ranges.clip(0, this.file.size).alignInward(this.blockSize);
  }

  canRelease(): Promise<boolean> {
    return this.file.canRelease();
  }

  async writeZeros(ranges: Extents): Promise<void> {
    for (const r of ranges) {
      for (let pos = r.start; pos < r.end; ) {
        const n = Math.min(1 << 20, r.end - pos);
        await this.file.write(Buffer.alloc(n), pos);
        pos += n;
      }
    }
    await this.file.sync();
  }

  /** Punch, then make the holes durable: "completed" must still be true after a power cut. */
  async discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
    const r = await this.punch(ranges, ctx);
    await this.file.sync();
    return r;
  }

  private async punch(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
    let done = 0;
    let ops = 0;
    for (const r of ranges) {
      let pos = r.start;
      while (pos < r.end) {
        if (ctx.signal?.aborted) return { discarded: done, kept: 0, aborted: true };
        const data = this.file.seekData(pos);
        if (data < 0 || data >= r.end) break;
        // Punch from a block boundary: SEEK_DATA may report a data start inside a block.
        const s = Math.max(r.start, Math.floor(data / this.blockSize) * this.blockSize);
        const hole = Math.min(this.file.seekHole(data), r.end);
        const e = Math.min(r.end, Math.ceil(hole / this.blockSize) * this.blockSize);
        if (e <= s) break; // a file shrunk underneath us: never loop
        this.file.punchHole(s, e - s);
        ctx.onProgress(done + (e - r.start));
        pos = e;
        if (++ops % OPS_PER_TURN === 0) await yieldToEventLoop();
      }
      done += r.end - r.start;
      ctx.onProgress(done);
      if (++ops % OPS_PER_TURN === 0) await yieldToEventLoop();
    }
    return { discarded: done, kept: 0, aborted: false };
  }
}

export class BlockDeviceDiscarder implements DiscardBackend {
  private constructor(
    private readonly file: BlockFile,
    private readonly unit: number,
    private readonly maxBytes: number | undefined,
  ) {}

  static async open(file: BlockFile, rdev: number): Promise<BlockDeviceDiscarder> {
    let sector = 512;
    try {
      sector = sys.blockDeviceSectorSize(file.fd);
    } catch {
      // keep 512
    }
    const info = deviceDiscardInfo(rdev);
    return new BlockDeviceDiscarder(file, Math.max(sector, info.granularity ?? 0), info.maxBytes);
  }

  get description(): string {
    return `block device (BLKDISCARD in ${this.unit}-byte units)`;
  }

  align(ranges: Extents): Extents {
    return ranges.clip(0, this.file.size).alignInward(this.unit);
  }

  /** The first discard doubles as the probe where sysfs does not say (it then fails changing nothing). */
  async canRelease(): Promise<boolean> {
    return this.maxBytes !== 0;
  }

  async discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
    const r = await this.discardPieces(ranges, ctx);
    await this.file.sync();
    return r;
  }

  private async discardPieces(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
    let done = 0;
    let first = true;
    for (const r of ranges) {
      for (let pos = r.start; pos < r.end; ) {
        if (ctx.signal?.aborted) return { discarded: done, kept: 0, aborted: true };
        const len = Math.min(DEVICE_PIECE, r.end - pos);
        try {
          this.file.discard(pos, len);
        } catch (e) {
          // The first discard doubles as the probe: it failed, so nothing changed.
          const code = errnoOf(e);
          if (first && code && UNSUPPORTED_ERRNOS.has(code)) throw discardUnsupported(`${this.file.path}: BLKDISCARD: ${code}`);
          throw e;
        }
        first = false;
        pos += len;
        done += len;
        ctx.onProgress(done);
        await yieldToEventLoop();
      }
    }
    return { discarded: done, kept: 0, aborted: false };
  }
}
