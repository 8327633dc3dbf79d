/** The raw format as a driver: no magic, opened directly, written as a sparse file. */
import { open, type FileHandle } from 'node:fs/promises';
import { SparsifyError } from '../io/errors.js';
import { RawImage } from './raw.js';
import type { FormatDriver, FormatOptions, ImageWriter } from './types.js';

/** Writes a sparse raw file: the file is sized up front, so whatever is not written is a hole. */
export class RawWriter implements ImageWriter {
  readonly format = 'raw';
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
