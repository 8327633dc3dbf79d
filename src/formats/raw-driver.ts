/** The raw format as a driver: no magic, opened directly, written as a sparse file. */
import { open, type FileHandle } from 'node:fs/promises';
import { SparsifyError } from '../io/errors.js';
import type { BlockFile } from '../io/file.js';
import { RawImage } from './raw.js';
import { cloneRange, copyFileRange, startWriteback } from '../io/syscalls.js';
import { isTransferUnsupported, probeHostTransfer } from '../io/transfer.js';
import type { FormatDriver, FormatOptions, ImageWriter, TransferMode, TransferSupport } from './types.js';

/** Start write-back after this many bytes, so the disk works while we read. */
const WRITEBACK_WINDOW = 32 << 20;

/** Writes a sparse raw file: the file is sized up front, so whatever is not written is a hole. */
export class RawWriter implements ImageWriter {
  readonly format = 'raw';
  readonly concurrentWrites = true;
  private pendingStart = -1;
  private pendingEnd = -1;

  private constructor(
    private readonly path: string,
    private readonly handle: FileHandle,
  ) {}

  static async create(path: string, virtualSize: number): Promise<RawWriter> {
    const handle = await open(path, 'wx');
    try {
      await handle.truncate(virtualSize);
    } catch (e) {
      await handle.close();
      throw e;
    }
    return new RawWriter(path, handle);
  }

  async transferSupport(source: BlockFile, sampleOffset: number): Promise<TransferSupport> {
    const host = await probeHostTransfer(source, sampleOffset, this.path);
    return { clone: host.clone, cloneAlignment: host.blockSize, copy: host.copy };
  }

  async transfer(source: BlockFile, fileOffset: number, offset: number, length: number, mode: TransferMode): Promise<boolean> {
    try {
      if (mode === 'clone') await cloneRange(source.fd, fileOffset, this.handle.fd, offset, length);
      else await copyFileRange(source.fd, fileOffset, this.handle.fd, offset, length);
    } catch (e) {
      if (isTransferUnsupported(e)) return false;
      throw e;
    }
    if (mode === 'copy') this.written(offset, length);
    return true;
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.handle.write(buf, done, buf.length - done, offset + done);
      done += bytesWritten;
    }
    this.written(offset, buf.length);
  }

  /** Start write-back once enough has been written, so the final fsync has little left to wait for. */
  private written(offset: number, length: number): void {
    if (this.pendingStart < 0 || offset < this.pendingStart) this.pendingStart = offset;
    this.pendingEnd = Math.max(this.pendingEnd, offset + length);
    if (this.pendingEnd - this.pendingStart >= WRITEBACK_WINDOW) {
      startWriteback(this.handle.fd, this.pendingStart, this.pendingEnd - this.pendingStart);
      this.pendingStart = -1;
      this.pendingEnd = -1;
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
