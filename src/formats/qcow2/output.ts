/**
 * Buffered positional writes for an image written front to back: appends at increasing offsets
 * are gathered into large writes; small gaps (cluster padding, slots filled later) are zero-filled
 * so the stream stays contiguous. Any write at an arbitrary offset must go through `writeAt`,
 * which flushes first so it lands after any padding that covers it.
 */
import type { BlockFile } from '../../io/file.js';

const STAGING_BYTES = 8 << 20;

export class OutputStream {
  private readonly staging = Buffer.allocUnsafe(STAGING_BYTES);
  private start = 0;
  private len = 0;

  constructor(
    private readonly file: BlockFile,
    /** Largest gap filled with zeros instead of starting a new write. */
    private readonly maxGap: number,
  ) {}

  /** Append `buf` at `offset` (>= the end of everything appended so far). `buf` is copied. */
  async append(buf: Uint8Array, offset: number): Promise<void> {
    const end = this.start + this.len;
    if (this.len > 0) {
      const gap = offset - end;
      if (gap < 0) throw new Error(`qcow2 output: append at ${offset} behind ${end}`);
      if (gap > this.maxGap || this.len + gap + buf.length > STAGING_BYTES) await this.flush();
      else if (gap > 0) {
        this.staging.fill(0, this.len, this.len + gap);
        this.len += gap;
      }
    }
    if (buf.length > STAGING_BYTES) {
      await this.flush();
      await this.file.write(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength), offset);
      return;
    }
    if (this.len === 0) this.start = offset;
    this.staging.set(buf, this.len);
    this.len += buf.length;
  }

  async writeAt(buf: Buffer, offset: number): Promise<void> {
    await this.flush();
    await this.file.write(buf, offset);
  }

  async flush(): Promise<void> {
    if (this.len === 0) return;
    const n = this.len;
    this.len = 0;
    await this.file.write(this.staging.subarray(0, n), this.start);
  }
}
