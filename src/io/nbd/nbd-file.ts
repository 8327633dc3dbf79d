/**
 * An NBD export as a BlockFile, so every format and executor works over it unchanged. It behaves
 * as a block device (fixed size, no truncate, no host locks or descriptor):
 * - seekData/seekHole answer from base:allocation, read once at open (ranges that read as zero
 *   count as holes) and kept current by our own writes and zeroing; without block status it is
 *   all data;
 * - release/punchHole send WRITE_ZEROES without NO_HOLE (the server may free the space), TRIM
 *   where zeroing is not offered; discard sends TRIM. These calls are synchronous for the callers,
 *   so the requests are queued and every later read, write, sync and close waits for them first
 *   (program order is kept; their errors surface there);
 * - sync waits for everything and sends FLUSH, where a file would get fdatasync.
 * Every change is reported to the I/O observers as BlockFile's are.
 */
import { BlockFile } from '../file.js';
import { Extents, ExtentsBuilder } from '../extents.js';
import { SparsifyError, hex } from '../errors.js';
import { notifyIo, observing } from '../observer.js';
import { NbdClient } from './client.js';
import { NbdError } from './connection.js';
import * as P from './protocol.js';
import { parseNbdUri, type NbdAddress } from './uri.js';

const COPY_CHUNK = 1 << 20;

export interface Allocation {
  /** Ranges that do not read as zero. */
  data: Extents;
  /** Ranges the server says are allocated (not holes). */
  allocated: Extents;
}

/** Walk base:allocation over the whole export. Without block status, everything is data. */
export async function readAllocation(client: NbdClient): Promise<Allocation> {
  const size = client.size;
  if (!client.canBlockStatus) return { data: Extents.of(0, size), allocated: Extents.of(0, size) };
  const data = new ExtentsBuilder();
  const allocated = new ExtentsBuilder();
  for (let pos = 0; pos < size; ) {
    const list = (await client.blockStatus(pos, size - pos)) ?? [];
    if (list.length === 0) throw new NbdError(`${client.addr.display}: BLOCK_STATUS at ${hex(pos)} returned no extents`);
    for (const d of list) {
      const end = Math.min(size, pos + d.length);
      if (d.length === 0) throw new NbdError(`${client.addr.display}: BLOCK_STATUS at ${hex(pos)} returned an empty extent`);
      if (!(d.flags & P.STATE_ZERO)) data.add(pos, end);
      if (!(d.flags & P.STATE_HOLE)) allocated.add(pos, end);
      pos = end;
      if (pos >= size) break;
    }
  }
  return { data: data.build(), allocated: allocated.build() };
}

export class NbdFile extends BlockFile {
  private data: Extents;
  private pairs: Float64Array | undefined;
  private queue: Array<Promise<void>> = [];
  private queueError: unknown;
  private zeroUnsupported = false;

  private constructor(
    readonly client: NbdClient,
    writable: boolean,
    alloc: Allocation,
  ) {
    super(client.addr.display, undefined, client.size, true, writable, 0);
    this.data = alloc.data;
  }

  static async openAddress(addr: NbdAddress | string, mode: 'r' | 'r+' = 'r'): Promise<NbdFile> {
    const a = typeof addr === 'string' ? parseNbdUri(addr) : addr;
    const client = await NbdClient.connect(a);
    try {
      if (mode === 'r+' && client.readOnly) throw new SparsifyError(`${a.display}: the export is read-only`);
      return new NbdFile(client, mode === 'r+', await readAllocation(client));
    } catch (e) {
      await client.close().catch(() => undefined);
      throw e;
    }
  }

  override get isRemote(): boolean {
    return true;
  }

  override get fd(): number {
    throw new Error(`${this.path}: an NBD export has no file descriptor`);
  }

  /** Bytes read from the export so far. */
  get bytesRead(): number {
    return this.client.bytesRead;
  }

  private enqueue(op: () => Promise<void>): void {
    const p = op().catch((e: unknown) => {
      this.queueError ??= e;
    });
    this.queue.push(p);
  }

  /** Wait for queued zero/trim requests; the first failure is thrown here. */
  private async drain(): Promise<void> {
    while (this.queue.length) {
      const q = this.queue;
      this.queue = [];
      await Promise.all(q);
    }
    if (this.queueError !== undefined) {
      const e = this.queueError;
      this.queueError = undefined;
      throw e;
    }
  }

  override async readExact(buf: Buffer, offset: number, what = 'data'): Promise<void> {
    if (offset < 0 || offset + buf.length > this.size) {
      throw new SparsifyError(`${this.path}: ${what} at ${hex(offset)} (+${buf.length}) lies beyond the end of the export (size ${hex(this.size)})`);
    }
    if (this.queue.length) await this.drain();
    await this.client.pread(buf, offset);
  }

  override async write(buf: Buffer, offset: number): Promise<void> {
    if (!this.writable) throw new Error(`${this.path}: opened read-only`);
    if (observing()) notifyIo(this.path, { kind: 'write', offset, data: Buffer.from(buf) });
    if (this.queue.length) await this.drain();
    await this.client.pwrite(buf, offset);
    this.setData(this.data.union(Extents.of(offset, offset + buf.length)));
  }

  /** The data ranges as [start, end, ...] for binary search; rebuilt after a change. */
  private get index(): Float64Array {
    if (!this.pairs) {
      const p = new Float64Array(this.data.count * 2);
      let i = 0;
      for (const r of this.data) {
        p[i++] = r.start;
        p[i++] = r.end;
      }
      this.pairs = p;
    }
    return this.pairs;
  }

  private setData(d: Extents): void {
    this.data = d;
    this.pairs = undefined;
  }

  /** Index of the first data range ending after `offset` (count when none). */
  private firstEndingAfter(offset: number): number {
    const p = this.index;
    let lo = 0;
    let hi = p.length / 2;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (p[2 * mid + 1]! <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  override seekData(offset: number): number {
    const i = this.firstEndingAfter(offset);
    const p = this.index;
    return i < p.length / 2 ? Math.max(p[2 * i]!, offset) : -1;
  }

  override seekHole(offset: number): number {
    const i = this.firstEndingAfter(offset);
    const p = this.index;
    if (i >= p.length / 2 || p[2 * i]! > offset) return Math.min(offset, this.size);
    return p[2 * i + 1]!;
  }

  /** The whole minimum blocks inside a range (requests must keep them). */
  get releaseUnit(): number {
    return this.client.minBlock;
  }

  /** Zero a range, letting the server free it (WRITE_ZEROES without NO_HOLE), or TRIM where it cannot zero. */
  override punchHole(offset: number, length: number): void {
    this.release(offset, length);
  }

  override discard(offset: number, length: number): void {
    if (!this.client.has(P.TFLAG.SEND_TRIM)) throw new NbdError(`${this.path}: the server does not offer TRIM`);
    this.enqueue(() => this.client.trim(offset, length));
    if (observing()) notifyIo(this.path, { kind: 'discard', offset, length });
  }

  override async canRelease(): Promise<boolean> {
    return this.writable && (this.client.has(P.TFLAG.SEND_WRITE_ZEROES) || this.client.has(P.TFLAG.SEND_TRIM));
  }

  /** Can a released range be trusted to read as zero (WRITE_ZEROES, not only TRIM)? */
  get releaseZeroes(): boolean {
    return this.client.has(P.TFLAG.SEND_WRITE_ZEROES) && !this.zeroUnsupported;
  }

  override release(offset: number, length: number): void {
    if (length <= 0) return;
    const unit = this.client.minBlock;
    const s = Math.ceil(offset / unit) * unit;
    const e = Math.floor(Math.min(offset + length, this.size) / unit) * unit;
    if (e <= s) return;
    if (this.releaseZeroes) {
      this.setData(this.data.subtract(Extents.of(s, e)));
      if (observing()) notifyIo(this.path, { kind: 'punch', offset: s, length: e - s });
      this.enqueue(async () => {
        try {
          await this.client.zero(s, e - s);
        } catch (err) {
          // A server that offers WRITE_ZEROES but cannot do it here: TRIM from now on.
          if (!(err instanceof NbdError) || (err.errno !== 'ENOTSUP' && err.errno !== 'EINVAL') || !this.client.has(P.TFLAG.SEND_TRIM)) throw err;
          this.zeroUnsupported = true;
          await this.client.trim(s, e - s);
        }
      });
    } else {
      this.discard(s, e - s);
    }
  }

  override async copyWithin(from: number, to: number, length: number): Promise<void> {
    if (from < to ? from + length > to : to + length > from) throw new Error(`${this.path}: copyWithin of overlapping ranges`);
    const runs = this.data.clip(from, from + length);
    const holes = runs.complement(from, from + length);
    for (const h of holes) {
      const [zs, ze] = [to + (h.start - from), to + (h.end - from)];
      if (this.releaseZeroes) this.release(zs, ze - zs);
      else await this.writeZeros(zs, ze - zs);
    }
    const buf = Buffer.allocUnsafe(COPY_CHUNK);
    for (const r of runs) {
      for (let pos = r.start; pos < r.end; pos += COPY_CHUNK) {
        const n = Math.min(COPY_CHUNK, r.end - pos);
        await this.readExact(buf.subarray(0, n), pos);
        await this.write(buf.subarray(0, n), to + (pos - from));
      }
    }
  }

  private async writeZeros(offset: number, length: number): Promise<void> {
    const z = Buffer.alloc(Math.min(COPY_CHUNK, length));
    for (let d = 0; d < length; d += z.length) await this.write(z.subarray(0, Math.min(z.length, length - d)), offset + d);
  }

  /** Bytes the server says are allocated, asked afresh (block status), after queued requests. */
  override async allocatedBytes(): Promise<number> {
    if (this.queue.length) await this.drain();
    return (await readAllocation(this.client)).allocated.total();
  }

  override async sync(): Promise<void> {
    await this.drain();
    await this.client.flush();
    if (observing()) notifyIo(this.path, { kind: 'sync' });
  }

  override async truncate(): Promise<void> {
    throw new Error(`${this.path}: an NBD export cannot be truncated`);
  }

  override async close(): Promise<void> {
    try {
      await this.drain();
    } finally {
      await this.client.close();
    }
  }
}
