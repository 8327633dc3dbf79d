/**
 * Copy mode into an NBD export: the export receives the guest's view (raw). Only kept data is
 * written; everything else is zeroed with WRITE_ZEROES (FAST_ZERO first where offered, then
 * plainly), skipping what block status already shows as zero, and never by sending buffers of
 * zeros unless the server offers no zeroing at all (then said in a warning). FLUSH before the copy
 * is called complete. An export cannot be removed on failure: the caller's error says the copy
 * did not complete.
 */
import { SparsifyError } from '../io/errors.js';
import { Extents } from '../io/extents.js';
import { NbdFile, readAllocation } from '../io/nbd/nbd-file.js';
import { NbdError } from '../io/nbd/connection.js';
import * as P from '../io/nbd/protocol.js';
import type { ImageWriter } from '../formats/types.js';

const ZERO_CHUNK = 1 << 20;

export class NbdRawWriter implements ImageWriter {
  readonly format = 'raw';
  readonly concurrentWrites = true;
  private written: number[] = [];
  /** What the export held as zero before we wrote anything. */
  private zeroBefore: Extents;
  allocatedAfter = 0;
  zeroRequests = 0;

  private constructor(
    private readonly file: NbdFile,
    private readonly virtualSize: number,
    private readonly warn: (m: string) => void,
  ) {
    this.zeroBefore = new Extents();
  }

  static async open(address: string, virtualSize: number, warn: (m: string) => void): Promise<NbdRawWriter> {
    const file = await NbdFile.openAddress(address, 'r+');
    try {
      if (file.size < virtualSize) throw new SparsifyError(`${file.path}: the export holds ${file.size} bytes, the disk needs ${virtualSize}`);
      if (file.size > virtualSize) warn(`${file.path}: the export is ${file.size - virtualSize} bytes larger than the disk; those bytes are left as they are`);
      const w = new NbdRawWriter(file, virtualSize, warn);
      const alloc = await readAllocation(file.client);
      w.zeroBefore = alloc.data.complement(0, file.size);
      return w;
    } catch (e) {
      await file.close().catch(() => undefined);
      throw e;
    }
  }

  get path(): string {
    return this.file.path;
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    await this.file.client.pwrite(buf, offset);
    this.written.push(offset, offset + buf.length);
  }

  private async zeroRange(start: number, end: number, fast: boolean): Promise<void> {
    const c = this.file.client;
    const unit = c.minBlock;
    const s = Math.ceil(start / unit) * unit;
    const e = Math.floor(end / unit) * unit;
    // Unaligned edges (only with a minimum block size): read-modify-write of one block each.
    if (s > start) await c.pwrite(Buffer.alloc(Math.min(s, end) - start), start);
    if (e > s) {
      await c.zero(s, e - s, { noHole: false, fast });
      this.zeroRequests++;
    }
    if (e < end && e >= s) await c.pwrite(Buffer.alloc(end - e), e);
  }

  async finish(): Promise<void> {
    const c = this.file.client;
    const holes = Extents.fromFlat(this.written).complement(0, this.virtualSize).subtract(this.zeroBefore);
    if (c.has(P.TFLAG.SEND_WRITE_ZEROES)) {
      let fast = c.has(P.TFLAG.SEND_FAST_ZERO);
      for (const h of holes) {
        try {
          await this.zeroRange(h.start, h.end, fast);
        } catch (e) {
          // FAST_ZERO refused (zeroing would be slow here): zero plainly from now on.
          if (!fast || !(e instanceof NbdError) || e.errno !== 'ENOTSUP') throw e;
          fast = false;
          await this.zeroRange(h.start, h.end, false);
        }
      }
    } else if (!holes.isEmpty) {
      this.warn(`${this.path}: the server offers no WRITE_ZEROES; ${holes.total()} bytes that were not zero are written with zeros`);
      for (const h of holes) for (let p = h.start; p < h.end; p += ZERO_CHUNK) await c.pwrite(Buffer.alloc(Math.min(ZERO_CHUNK, h.end - p)), p);
    }
    await this.file.sync();
    this.allocatedAfter = await this.file.allocatedBytes();
    await this.file.close();
  }

  async abort(): Promise<void> {
    await this.file.close().catch(() => undefined);
  }
}
