/**
 * Buffered positional writes for an image written front to back: appends at increasing offsets
 * are gathered into large writes; small gaps (cluster padding, slots filled later) are zero-filled
 * so the stream stays contiguous. Any write at an arbitrary offset must go through `writeAt`,
 * which flushes first so it lands after any padding that covers it.
 *
 * Several staging buffers rotate: one fills while the others are being written (to disjoint
 * ranges, so order does not matter). Staged runs go through the O_DIRECT descriptor where the host
 * allows it and they are aligned (see direct-output.ts: no page-cache copy, nothing left dirty
 * for the final fdatasync); the rest goes through the page cache, and each such write starts the
 * kernel's write-back, so the final fdatasync has little left to wait for. While I/O observers
 * record writes (tests replaying power cuts), everything goes through the BlockFile they watch.
 */
import type { BlockFile } from '../../io/file.js';
import { observing } from '../../io/observer.js';
import { allocateRange, startWriteback } from '../../io/syscalls.js';
import { alignedBuffer } from '../../io/aligned-buffer.js';
import type { DirectOutput } from './direct-output.js';

const STAGING_BYTES = 4 << 20;
/**
 * Staging buffers being written while the next one fills. Direct writes wait for the device, so
 * more of them keep it busy: 2 GiB of O_DIRECT appends, median of 4 alternating runs on a shared
 * disk, took 4.5 s with 3 in flight and 3.7 s with 8.
 */
const WRITES_IN_FLIGHT = 8;
/**
 * Direct writes go into blocks given ahead in steps this large (more than all the writes in
 * flight), inside the file size: ext4 and XFS run direct writes that extend a file, or fill
 * holes, one at a time under the inode lock, and overlap those into allocated blocks. The file
 * is cut to its real end by the writer's finish().
 */
const RESERVE_STEP = 64 << 20;

/** Shorter runs are staged (copied) rather than written on their own. */
const LEND_MIN = 256 << 10;

export class OutputStream {
  private staging: Buffer = alignedBuffer(STAGING_BYTES);
  private readonly free: Buffer[] = Array.from({ length: WRITES_IN_FLIGHT }, () => alignedBuffer(STAGING_BYTES));
  private start = 0;
  private len = 0;
  /** The file has blocks up to here (given ahead for direct writes); Infinity once the host refused. */
  private reserved = 0;
  /** The step being given, if any (never rejects). */
  private reserving: Promise<void> | undefined;
  /** Bytes that went through the O_DIRECT descriptor (the rest went through the page cache). */
  bytesDirect = 0;
  /** Writes from callers' buffers running (appendFrom); each settles, never rejects. */
  private readonly lent = new Set<Promise<void>>();
  /** Writes running, oldest first, each giving back its buffer. */
  private readonly inFlight: Array<Promise<Buffer>> = [];

  constructor(
    private readonly file: BlockFile,
    /** Largest gap filled with zeros instead of starting a new write. */
    private readonly maxGap: number,
    /** The same file opened for direct writes, where the host allows them. */
    private readonly direct?: DirectOutput,
    /**
     * May blocks be given ahead of direct writes? Only where everything below the image's end is
     * written (not with preallocation=metadata, whose clusters are left as holes on purpose).
     */
    reserveAhead = false,
  ) {
    if (!reserveAhead) this.reserved = Infinity;
  }

  /** Append `buf` at `offset` (>= the end of everything appended so far). `buf` is copied. */
  async append(buf: Uint8Array, offset: number): Promise<void> {
    this.checkAhead(offset);
    if (this.len > 0) {
      const gap = offset - (this.start + this.len);
      if (gap > this.maxGap || this.len + gap + buf.length > STAGING_BYTES) await this.flush();
      else if (gap > 0) {
        this.staging.fill(0, this.len, this.len + gap);
        this.len += gap;
      }
    }
    if (buf.length > STAGING_BYTES) {
      await this.drain();
      await this.file.write(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength), offset);
      return;
    }
    if (this.len === 0) this.start = offset;
    this.staging.set(buf, this.len);
    this.len += buf.length;
  }

  /**
   * Append `buf` at `offset` as `append` does, but where it can go direct, straight from the
   * caller's memory: no copy into a staging buffer (measured, that copy was the main thread's
   * largest cost in a copy from NBD), and several such writes run at once, as the caller's
   * buffers allow. Returns once the stream has taken the write; `done` settles when `buf` is no
   * longer needed (and rejects if the write failed).
   */
  async appendFrom(buf: Buffer, offset: number): Promise<{ done: Promise<void> }> {
    if (!this.direct || buf.length < LEND_MIN || observing() || !this.direct.fits(buf, offset)) {
      await this.append(buf, offset);
      return { done: Promise.resolve() };
    }
    this.checkAhead(offset);
    // What is staged goes first (its write runs beside this one: the ranges are disjoint). A gap
    // left between them is never written: in this new file it reads as zero.
    await this.flush();
    const done = this.writeStaged(buf, offset);
    const tracked: Promise<void> = done.then(
      () => void this.lent.delete(tracked),
      () => void this.lent.delete(tracked),
    );
    this.lent.add(tracked);
    return { done };
  }

  /** An append may not land behind what is staged. */
  private checkAhead(offset: number): void {
    const end = this.start + this.len;
    if (this.len > 0 && offset < end) throw new Error(`qcow2 output: append at ${offset} behind ${end}`);
  }

  async writeAt(buf: Buffer, offset: number): Promise<void> {
    await this.drain();
    await this.file.write(buf, offset);
  }

  /** Start writing what is staged; returns once a staging buffer is free again. */
  async flush(): Promise<void> {
    if (this.len === 0) return;
    const buf = this.staging;
    const data = buf.subarray(0, this.len);
    const start = this.start;
    this.len = 0;
    const w = this.writeStaged(data, start).then(() => buf);
    // Awaited in order later; a failure must not count as unhandled meanwhile.
    w.catch(() => undefined);
    this.inFlight.push(w);
    if (!this.free.length) this.free.push(await this.inFlight.shift()!);
    this.staging = this.free.pop()!;
  }

  /** Write one run, staged or lent (appendFrom): direct where it can, the rest through the page cache. */
  private async writeStaged(data: Buffer, start: number): Promise<void> {
    let direct = 0;
    if (this.direct && !observing() && this.direct.fits(data, start)) {
      await this.reserveTo(start + data.length);
      direct = await this.direct.write(data, start);
    }
    this.bytesDirect += direct;
    if (direct === data.length) return;
    await this.file.write(data.subarray(direct), start + direct);
    startWriteback(this.file.fd, start + direct, data.length - direct);
  }

  /**
   * Make sure the file has blocks up to `end`, and start giving it the next step once writes are
   * half way into the last one, so that a write seldom waits. A host that cannot (no fallocate,
   * no space: the writes say so if it matters) is not asked again.
   */
  private async reserveTo(end: number): Promise<void> {
    for (;;) {
      if (this.reserved === Infinity) return;
      if (this.reserving) {
        if (end <= this.reserved) return;
        await this.reserving;
        continue;
      }
      if (end <= this.reserved - RESERVE_STEP / 2) return;
      const from = this.reserved;
      const to = (Math.floor(Math.max(end, from) / RESERVE_STEP) + 1) * RESERVE_STEP;
      const done = allocateRange(this.file.fd, from, to - from)
        .then(
          () => void (this.reserved = to),
          () => void (this.reserved = Infinity),
        )
        .finally(() => (this.reserving = undefined));
      this.reserving = done;
      if (end > from) await done;
      return;
    }
  }

  /** Everything staged is written. */
  async drain(): Promise<void> {
    await this.flush();
    while (this.inFlight.length) this.free.push(await this.inFlight.shift()!);
    // Their failures reach the callers through appendFrom's `done`.
    await Promise.all(this.lent);
    // A step given ahead must not land after the writer cuts the file to its end (or closes it).
    await this.reserving;
  }

  /** Release the direct descriptor (the BlockFile is its owner's to close). */
  async close(): Promise<void> {
    await Promise.all(this.lent);
    await this.reserving;
    await this.direct?.close();
  }
}
