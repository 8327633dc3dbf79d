/**
 * A file or block device opened for positional I/O, with the extra operations sparsify needs:
 * data/hole queries, hole punching, discard and exact reads that fail loudly on short input.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { SparsifyError, hex } from './errors.js';
import * as sys from './syscalls.js';

export class BlockFile {
  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    readonly size: number,
    readonly isBlockDevice: boolean,
    readonly writable: boolean,
  ) {}

  static async open(path: string, mode: 'r' | 'r+' = 'r'): Promise<BlockFile> {
    let handle: FileHandle;
    try {
      handle = await open(path, mode === 'r' ? fsConstants.O_RDONLY : fsConstants.O_RDWR);
    } catch (e) {
      throw new SparsifyError(`cannot open ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    try {
      const st = await handle.stat();
      if (st.isDirectory()) throw new SparsifyError(`${path}: is a directory`);
      const isBlock = st.isBlockDevice();
      const size = isBlock ? sys.blockDeviceSize(handle.fd) : st.size;
      return new BlockFile(path, handle, size, isBlock, mode === 'r+');
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  get fd(): number {
    return this.handle.fd;
  }

  /** Read exactly buf.length bytes at `offset`; anything short is a truncated file. */
  async readExact(buf: Buffer, offset: number, what = 'data'): Promise<void> {
    if (offset < 0 || offset + buf.length > this.size) {
      throw new SparsifyError(
        `${this.path}: ${what} at ${hex(offset)} (+${buf.length}) lies beyond end of file (size ${hex(this.size)})`,
      );
    }
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.handle.read(buf, done, buf.length - done, offset + done);
      if (bytesRead === 0) throw new SparsifyError(`${this.path}: unexpected end of file reading ${what} at ${hex(offset + done)}`);
      done += bytesRead;
    }
  }

  /** Read up to buf.length bytes; bytes past end of file are zero-filled. */
  async readZeroPadded(buf: Buffer, offset: number): Promise<void> {
    const avail = Math.max(0, Math.min(buf.length, this.size - offset));
    if (avail > 0) await this.readExact(buf.subarray(0, avail), offset);
    if (avail < buf.length) buf.fill(0, avail);
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.handle.write(buf, done, buf.length - done, offset + done);
      done += bytesWritten;
    }
  }

  /** Next data offset at or after `offset`, or -1 if only holes remain. Block devices are all data. */
  seekData(offset: number): number {
    if (this.isBlockDevice) return offset < this.size ? offset : -1;
    return sys.seekData(this.fd, offset);
  }

  seekHole(offset: number): number {
    if (this.isBlockDevice) return this.size;
    return Math.min(sys.seekHole(this.fd, offset), this.size);
  }

  punchHole(offset: number, length: number): void {
    sys.punchHole(this.fd, offset, length);
  }

  discard(offset: number, length: number): void {
    sys.discardBlockDevice(this.fd, offset, length);
  }

  async allocatedBytes(): Promise<number> {
    if (this.isBlockDevice) return this.size;
    const st = await this.handle.stat();
    return st.blocks * 512;
  }

  async sync(): Promise<void> {
    await this.handle.datasync();
  }

  async truncate(size: number): Promise<void> {
    await this.handle.truncate(size);
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}
