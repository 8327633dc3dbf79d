/**
 * A file or block device opened for positional I/O, with the extra operations sparsify needs:
 * data/hole queries, hole punching, discard, copies inside the file, and exact reads that fail
 * loudly on short input. Every change made through a writable BlockFile (write, punch, discard,
 * truncate, sync) is reported to the I/O observers, so a test can record an in-place run and
 * replay the states a power cut could leave (io/observer.ts).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { SparsifyError, hex } from './errors.js';
import * as sys from './syscalls.js';
import { notifyIo, observing } from './observer.js';
import { deviceDiscardInfo } from './device-info.js';

/** errno names of a copy_file_range the host cannot do here (the copy then goes through memory). */
const COPY_UNSUPPORTED = new Set(['EOPNOTSUPP', 'ENOTSUP', 'ENOSYS', 'EINVAL', 'EXDEV', 'EBADF']);
const COPY_CHUNK = 1 << 20;

export class BlockFile {
  /** Subclasses (an NBD export, io/nbd/) pass no handle and override every method that uses it. */
  protected constructor(
    readonly path: string,
    private readonly fileHandle: FileHandle | undefined,
    protected length: number,
    readonly isBlockDevice: boolean,
    readonly writable: boolean,
    /** Device number of a block device (0 for a file). */
    private readonly rdev: number,
  ) {}

  /** The unit `release` works in on a block device, and whether it can discard at all (undefined: not probed yet). */
  private deviceRelease: { unit: number; can: boolean } | undefined;

  /** Bytes in the file (a block device's capacity); follows truncate(). */
  get size(): number {
    return this.length;
  }

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
      return new BlockFile(path, handle, size, isBlock, mode === 'r+', isBlock ? st.rdev : 0);
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  private get handle(): FileHandle {
    if (!this.fileHandle) throw new Error(`${this.path}: not a local file`);
    return this.fileHandle;
  }

  get fd(): number {
    return this.handle.fd;
  }

  /** Served by a remote peer (NBD), not a local file or device: no descriptor, no host locks. */
  get isRemote(): boolean {
    return false;
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
    if (observing()) notifyIo(this.path, { kind: 'write', offset, data: Buffer.from(buf) });
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.handle.write(buf, done, buf.length - done, offset + done);
      done += bytesWritten;
    }
    // A write past the end of a file makes it longer.
    if (!this.isBlockDevice && offset + buf.length > this.length) this.length = offset + buf.length;
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
    if (observing()) notifyIo(this.path, { kind: 'punch', offset, length });
  }

  discard(offset: number, length: number): void {
    sys.discardBlockDevice(this.fd, offset, length);
    if (observing()) notifyIo(this.path, { kind: 'discard', offset, length });
  }

  private deviceReleaseInfo(): { unit: number; can: boolean } {
    if (!this.deviceRelease) {
      let sector = 512;
      try {
        sector = sys.blockDeviceSectorSize(this.fd);
      } catch {
        // keep 512
      }
      const info = deviceDiscardInfo(this.rdev);
      this.deviceRelease = { unit: Math.max(sector, info.granularity ?? 0), can: info.maxBytes !== 0 };
    }
    return this.deviceRelease;
  }

  /**
   * Can `release` give space back here? A file: punching a hole just past its end (which changes
   * nothing) works. A device: sysfs does not say discard_max_bytes is 0.
   */
  async canRelease(): Promise<boolean> {
    if (this.isBlockDevice) return this.deviceReleaseInfo().can;
    const at = Math.ceil(this.size / 4096) * 4096;
    try {
      sys.punchHole(this.fd, at, 4096);
      return true;
    } catch (e) {
      if (e instanceof sys.SyscallError && ['EOPNOTSUPP', 'ENOTSUP', 'ENOSYS', 'ENOTTY', 'EINVAL'].includes(e.code)) return false;
      throw e;
    }
  }

  /**
   * Give [offset, offset+length) back to the host; what it reads afterwards is undefined (zeros in
   * a file). A file gets a hole; a device gets BLKDISCARD over the whole discard units inside.
   */
  release(offset: number, length: number): void {
    if (length <= 0) return;
    if (!this.isBlockDevice) {
      this.punchHole(offset, length);
      return;
    }
    const { unit } = this.deviceReleaseInfo();
    const start = Math.ceil(offset / unit) * unit;
    const end = Math.floor(Math.min(offset + length, this.size) / unit) * unit;
    if (end > start) this.discard(start, end - start);
  }

  /**
   * Copy [from, from+length) to [to, to+length) inside this file (the ranges must not overlap).
   * Holes stay holes: only the source's data is copied, in the kernel where it can
   * (copy_file_range, which shares blocks on reflink filesystems), otherwise through memory; the
   * destination's part facing a hole is punched (written with zeros where the storage cannot).
   */
  async copyWithin(from: number, to: number, length: number): Promise<void> {
    if (from < to ? from + length > to : to + length > from) throw new Error(`${this.path}: copyWithin of overlapping ranges`);
    const end = from + length;
    for (let pos = from; pos < end; ) {
      const d = this.seekData(pos);
      const dataAt = d < 0 ? end : Math.min(end, d);
      if (dataAt > pos) await this.zeroRange(to + (pos - from), dataAt - pos);
      if (dataAt >= end) break;
      const h = this.seekHole(dataAt);
      const holeAt = h <= dataAt ? end : Math.min(end, h);
      await this.copyData(dataAt, to + (dataAt - from), holeAt - dataAt);
      pos = holeAt;
    }
  }

  private async copyData(from: number, to: number, length: number): Promise<void> {
    if (!observing()) {
      try {
        await sys.copyFileRange(this.fd, from, this.fd, to, length);
        // Start writing the copy out now, so the caller's fdatasync finds little left to do.
        if (!this.isBlockDevice) sys.startWriteback(this.fd, to, length);
        return;
      } catch (e) {
        if (!(e instanceof sys.SyscallError) || !COPY_UNSUPPORTED.has(e.code)) throw e;
      }
    }
    // Through memory: also the path a recorded run takes, so its log holds the bytes written.
    const buf = Buffer.allocUnsafe(Math.min(COPY_CHUNK, length));
    for (let done = 0; done < length; ) {
      const n = Math.min(buf.length, length - done);
      await this.readZeroPadded(buf.subarray(0, n), from + done);
      await this.write(buf.subarray(0, n), to + done);
      done += n;
    }
  }

  /** Make [offset, offset+length) read as zero: a hole, or written zeros where holes cannot be punched. */
  private async zeroRange(offset: number, length: number): Promise<void> {
    if (offset >= this.size) return;
    length = Math.min(length, this.size - offset);
    try {
      this.punchHole(offset, length);
      return;
    } catch (e) {
      if (!(e instanceof sys.SyscallError) || !COPY_UNSUPPORTED.has(e.code)) throw e;
    }
    const zeros = Buffer.alloc(Math.min(COPY_CHUNK, length));
    for (let done = 0; done < length; done += zeros.length) await this.write(zeros.subarray(0, Math.min(zeros.length, length - done)), offset + done);
  }

  async allocatedBytes(): Promise<number> {
    if (this.isBlockDevice) return this.size;
    const st = await this.handle.stat();
    return st.blocks * 512;
  }

  async sync(): Promise<void> {
    await this.handle.datasync();
    if (observing()) notifyIo(this.path, { kind: 'sync' });
  }

  /** Shorten (or extend) a regular file; a block device cannot change its size. */
  async truncate(size: number): Promise<void> {
    if (this.isBlockDevice) throw new Error(`${this.path}: a block device cannot be truncated`);
    await this.handle.truncate(size);
    this.length = size;
    if (observing()) notifyIo(this.path, { kind: 'truncate', size });
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}
