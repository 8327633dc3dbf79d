/**
 * A second descriptor of the image being written, opened with O_DIRECT, for the output stream's
 * large aligned appends. Facts relied on:
 * - an O_DIRECT write moves the bytes from our buffer to the device without the page cache, so
 *   there is no kernel copy, no dirty page to write back later, and the final fdatasync (on the
 *   ordinary descriptor: it covers the inode, whichever descriptor wrote) has only the metadata
 *   and the device cache left;
 * - it needs the buffer address, the file offset and the length aligned to the filesystem's
 *   direct I/O unit (io/aligned-buffer.ts). Anything else, a filesystem that
 *   refuses O_DIRECT at open (tmpfs) or at a write (EINVAL), goes through the page cache as before;
 * - direct and buffered writes to different pages of one file stay coherent, and the stream never
 *   has both in flight over the same range (it drains before any write elsewhere).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { DIRECT_ALIGN, isAligned } from '../../io/aligned-buffer.js';

export class DirectOutput {
  private constructor(private handle: FileHandle | undefined) {}

  /** The image opened for direct writes, or undefined where the host does not allow it. */
  static async open(path: string): Promise<DirectOutput | undefined> {
    const flag = fsConstants.O_DIRECT;
    if (!flag) return undefined;
    try {
      return new DirectOutput(await open(path, fsConstants.O_WRONLY | flag));
    } catch {
      return undefined;
    }
  }

  /** Can [offset, offset + buf.length) from `buf` go direct? */
  fits(buf: Buffer, offset: number): boolean {
    return this.handle !== undefined && offset % DIRECT_ALIGN === 0 && buf.length % DIRECT_ALIGN === 0 && isAligned(buf);
  }

  /**
   * Write `buf` (which `fits`) at `offset`. Returns how many bytes were written; fewer than
   * buf.length when the host refused direct I/O here (EINVAL: from then on nothing goes direct)
   * or wrote short at an unaligned count: the caller writes the rest through the page cache.
   */
  async write(buf: Buffer, offset: number): Promise<number> {
    let done = 0;
    while (done < buf.length && this.handle && done % DIRECT_ALIGN === 0) {
      try {
        const { bytesWritten } = await this.handle.write(buf, done, buf.length - done, offset + done);
        if (bytesWritten === 0) break;
        done += bytesWritten;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
        await this.close();
      }
    }
    return done;
  }

  async close(): Promise<void> {
    const h = this.handle;
    this.handle = undefined;
    await h?.close();
  }
}
