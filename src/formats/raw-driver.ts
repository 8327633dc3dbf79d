/** The raw format as a driver: no magic, opened directly, written as a sparse file. */
import { open, type FileHandle } from 'node:fs/promises';
import { SparsifyError } from '../io/errors.js';
import { RawImage } from './raw.js';
import { startWriteback } from '../io/syscalls.js';

/** Start write-back after this many bytes, so the disk works while we read. */
const WRITEBACK_WINDOW = 32 << 20;
import type { FormatDriver, FormatOptions, ImageWriter } from './types.js';

/** Writes a sparse raw file: the file is sized up front, so whatever is not written is a hole. */
export class RawWriter implements ImageWriter {
  readonly format = 'raw';
  readonly concurrentWrites = true;
  private pendingStart = -1;
  private pendingEnd = -1;

  private constructor(private readonly handle: FileHandle) {}

  static async create(path: string, virtualSize: number): Promise<RawWriter> {
    const handle = await open(path, 'wx');
    try {
      await handle.truncate(virtualSize);
    } catch (e) {
      await handle.close();
      throw e;
    }
    return new RawWriter(handle);
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.handle.write(buf, done, buf.length - done, offset + done);
      done += bytesWritten;
    }
    if (this.pendingStart < 0) this.pendingStart = offset;
    this.pendingEnd = offset + buf.length;
    if (this.pendingEnd - this.pendingStart >= WRITEBACK_WINDOW) {
      startWriteback(this.handle.fd, this.pendingStart, this.pendingEnd - this.pendingStart);
      this.pendingStart = -1;
    }
  }

  async finish(): Promise<void> {
    await this.handle.sync();
    await this.handle.close();
  }

  async abort(): Promise<void> {
    await this.handle.close().catch(() => undefined);
  }
}

export const rawDriver: FormatDriver = {
  name: 'raw',
  probe: () => false,
  open: (file) => RawImage.open(file),
  createOptions: new Map(),
  async createWriter(path: string, virtualSize: number, options: FormatOptions) {
    if (options.size > 0) {
      throw new SparsifyError(`raw output takes no -o options (got: ${[...options.keys()].join(', ')})`);
    }
    return RawWriter.create(path, virtualSize);
  },
};
