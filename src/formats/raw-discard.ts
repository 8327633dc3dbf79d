/**
 * In-place discard for raw images: hole punching (fallocate PUNCH_HOLE | KEEP_SIZE) in a regular
 * file, over the ranges that are data now (SEEK_DATA/SEEK_HOLE), so the cost follows the file's
 * allocation and not its size; BLKDISCARD on a block device, aligned to its discard granularity.
 */
import { statfs } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import type { BlockFile } from '../io/file.js';
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

  /** Punch just past the end of file: nothing lives there, but a filesystem without punching says so. */
  async probe(): Promise<void> {
    const at = Math.ceil(this.file.size / this.blockSize) * this.blockSize;
    try {
      this.file.punchHole(at, this.blockSize);
    } catch (e) {
      const code = errnoOf(e);
      if (code && UNSUPPORTED_ERRNOS.has(code)) {
        throw discardUnsupported(`${this.file.path}: the host filesystem cannot punch holes (fallocate: ${code})`);
      }
      throw e;
    }
  }

  async writeZeros(ranges: Extents): Promise<void> {
    for (const r of ranges) {
      for (let pos = r.start; pos < r.end; ) {
        const n = Math.min(1 << 20, r.end - pos);
        await this.file.write(Buffer.alloc(n), pos);
        pos += n;
      }
    }
  }

  async discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
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

/** The /sys/dev/block/MAJ:MIN/queue folder of a device (a partition's queue is its disk's). */
function readQueue(rdev: number, name: string): number | undefined {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 2 ** 20) & 0xfff) << 8);
  for (const dir of [`/sys/dev/block/${major}:${minor}/queue`, `/sys/dev/block/${major}:${minor}/../queue`]) {
    try {
      const v = Number(readFileSync(`${dir}/${name}`, 'utf8').trim());
      if (Number.isFinite(v)) return v;
    } catch {
      // try the next place
    }
  }
  return undefined;
}

export class BlockDeviceDiscarder implements DiscardBackend {
  private constructor(
    private readonly file: BlockFile,
    private readonly granularity: number,
    private readonly maxBytes: number | undefined,
  ) {}

  static async open(file: BlockFile, rdev: number): Promise<BlockDeviceDiscarder> {
    let sector = 512;
    try {
      sector = sys.blockDeviceSectorSize(file.fd);
    } catch {
      // keep 512
    }
    const gran = readQueue(rdev, 'discard_granularity') ?? 0;
    const max = readQueue(rdev, 'discard_max_bytes');
    const g = Math.max(sector, gran);
    return new BlockDeviceDiscarder(file, g, max);
  }

  get description(): string {
    return `block device (BLKDISCARD in ${this.granularity}-byte units)`;
  }

  align(ranges: Extents): Extents {
    return ranges.clip(0, this.file.size).alignInward(this.granularity);
  }

  async probe(): Promise<void> {
    if (this.maxBytes === 0) throw discardUnsupported(`${this.file.path}: the device does not support discard (discard_max_bytes is 0)`);
  }

  async discard(ranges: Extents, ctx: DiscardContext): Promise<DiscardResult> {
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
