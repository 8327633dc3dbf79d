/**
 * An NBD export as byte-addressed storage: reads, writes, zeroing, trim, flush and block status,
 * with requests cut to the server's maximum block size (and to 32-bit lengths) and aligned to its
 * minimum (reads widen; unaligned writes read, modify and write whole blocks, one at a time).
 * Several requests of one call run at once. A server that sets CAN_MULTI_CONN gets several
 * connections (defaultConnections; each request goes to the least busy; a FLUSH on one then covers
 * writes answered on all, per the protocol); extra connections that fail are done without.
 * Timeouts come from SPARSIFY_NBD_TIMEOUT (seconds, default 60) so a silent server fails, never
 * hangs.
 */
import { availableParallelism } from 'node:os';
import { hex } from '../errors.js';
import { NbdConnection, NbdError, type StatusExtent, type Timeouts } from './connection.js';
import * as P from './protocol.js';
import type { NbdAddress } from './uri.js';
import type { ExportInfo } from './handshake.js';

/**
 * The largest READ or WRITE we send (the server's maximum, at most this). qemu-nbd serves requests
 * of 1 MiB and more at times many times slower (it allocates each one's buffer anew: 4 GiB with
 * nbdcopy's 2 MiB requests took 33 s against 3.4 s; reading 2 GiB in 1 MiB requests took it 6-7 s
 * of CPU in some runs), and 512 KiB ones, half as many replies to parse as 256 KiB, made the
 * 2-connection copy from it 2.66 s against 3.28 s (medians of 6 alternating runs).
 */
const IO_REQUEST = 512 << 10;
/**
 * Connections to a CAN_MULTI_CONN server: one per core, at most 4, as nbdcopy opens. Our replies
 * are all parsed on one thread, so connections past the cores only add work for a server that
 * shares them: copying 4 GiB (2 GiB kept) from qemu-nbd over a Unix socket on 2 cores to qcow2,
 * medians of 6 alternating runs, took 2.75 s with 2 connections and 4.10 s with 4.
 */
export function defaultConnections(): number {
  return Math.max(1, Math.min(4, availableParallelism()));
}
/** Zero/trim/status requests may be much larger (no payload). */
const BIG_REQUEST = 1 << 30;

export function defaultTimeouts(): Timeouts {
  const s = Number(process.env['SPARSIFY_NBD_TIMEOUT'] ?? '');
  const ms = Number.isFinite(s) && s > 0 ? s * 1000 : 60_000;
  return { connectMs: ms, requestMs: ms };
}

export class NbdClient {
  private rmw: Promise<void> = Promise.resolve();
  /** Bytes read from the export (for -v). */
  bytesRead = 0;

  private constructor(
    readonly addr: NbdAddress,
    private readonly conns: NbdConnection[],
  ) {}

  static async connect(addr: NbdAddress, timeouts: Timeouts = defaultTimeouts(), maxConnections = defaultConnections()): Promise<NbdClient> {
    const first = await NbdConnection.open(addr, timeouts);
    const conns = [first];
    if (first.info.flags & P.TFLAG.CAN_MULTI_CONN) {
      const extra = await Promise.allSettled(Array.from({ length: maxConnections - 1 }, () => NbdConnection.open(addr, { ...timeouts, connectMs: Math.min(timeouts.connectMs, 5000) })));
      for (const r of extra) {
        // Only connections that see the same export are used.
        if (r.status === 'fulfilled' && r.value.info.size === first.info.size && r.value.info.flags === first.info.flags) conns.push(r.value);
        else if (r.status === 'fulfilled') await r.value.close().catch(() => undefined);
      }
    }
    return new NbdClient(addr, conns);
  }

  /** Connections open to the export. */
  get connections(): number {
    return this.conns.length;
  }

  /** The least busy connection. */
  private get conn(): NbdConnection {
    let best = this.conns[0]!;
    for (const c of this.conns) if (c.load < best.load) best = c;
    return best;
  }

  get info(): ExportInfo {
    return this.conns[0]!.info;
  }
  get size(): number {
    return this.info.size;
  }
  get readOnly(): boolean {
    return (this.info.flags & P.TFLAG.READ_ONLY) !== 0;
  }
  has(flag: number): boolean {
    return (this.info.flags & flag) !== 0;
  }
  get canBlockStatus(): boolean {
    return this.info.allocationContext !== undefined;
  }
  /** Alignment every request must keep. */
  get minBlock(): number {
    return Math.max(1, this.info.minBlock);
  }
  private ioMax(): number {
    const m = Math.min(IO_REQUEST, this.info.maxBlock || IO_REQUEST);
    return Math.max(this.minBlock, Math.floor(m / this.minBlock) * this.minBlock);
  }
  private bigMax(): number {
    return Math.max(this.minBlock, Math.floor(Math.min(BIG_REQUEST, P.MAX_REQUEST_LENGTH) / this.minBlock) * this.minBlock);
  }

  private checkRange(what: string, offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new NbdError(`${this.addr.display}: ${what} at ${hex(offset)} (+${length}) lies beyond the end of the export (size ${hex(this.size)})`);
    }
  }

  /** Read exactly buf.length bytes at offset. */
  async pread(buf: Buffer, offset: number): Promise<void> {
    if (buf.length === 0) return;
    this.checkRange('READ', offset, buf.length);
    const a = this.minBlock;
    const start = Math.floor(offset / a) * a;
    const end = Math.ceil((offset + buf.length) / a) * a;
    if (start === offset && end === offset + buf.length) return this.readAligned(buf, offset);
    const wide = Buffer.allocUnsafe(end - start);
    await this.readAligned(wide, start);
    wide.copy(buf, 0, offset - start, offset - start + buf.length);
  }

  private async readAligned(buf: Buffer, offset: number): Promise<void> {
    const max = this.ioMax();
    const parts: Array<Promise<unknown>> = [];
    for (let done = 0; done < buf.length; done += max) {
      const n = Math.min(max, buf.length - done);
      parts.push(this.conn.request(P.CMD.READ, 0, offset + done, n, undefined, buf.subarray(done, done + n)));
    }
    await Promise.all(parts);
    this.bytesRead += buf.length;
  }

  async pwrite(data: Buffer, offset: number): Promise<void> {
    if (data.length === 0) return;
    this.checkRange('WRITE', offset, data.length);
    const a = this.minBlock;
    if (offset % a === 0 && data.length % a === 0) return this.writeAligned(data, offset);
    // Read-modify-write of the covering blocks, one at a time so two never race on a block.
    const run = this.rmw.then(async () => {
      const start = Math.floor(offset / a) * a;
      const end = Math.ceil((offset + data.length) / a) * a;
      const wide = Buffer.allocUnsafe(end - start);
      await this.readAligned(wide, start);
      data.copy(wide, offset - start);
      await this.writeAligned(wide, start);
    });
    this.rmw = run.catch(() => undefined);
    return run;
  }

  private async writeAligned(data: Buffer, offset: number): Promise<void> {
    const max = this.ioMax();
    const parts: Array<Promise<unknown>> = [];
    for (let done = 0; done < data.length; done += max) {
      const n = Math.min(max, data.length - done);
      parts.push(this.conn.request(P.CMD.WRITE, 0, offset + done, n, data.subarray(done, done + n)));
    }
    await Promise.all(parts);
  }

  /** The whole blocks inside [offset, offset+length). */
  private inward(offset: number, length: number): [number, number] {
    const a = this.minBlock;
    const s = Math.ceil(offset / a) * a;
    const e = Math.floor(Math.min(offset + length, this.size) / a) * a;
    return [s, Math.max(s, e)];
  }

  private async bigRequests(type: number, flags: number, start: number, end: number): Promise<void> {
    const max = this.bigMax();
    const parts: Array<Promise<unknown>> = [];
    for (let pos = start; pos < end; pos += max) parts.push(this.conn.request(type, flags, pos, Math.min(max, end - pos)));
    await Promise.all(parts);
  }

  /**
   * WRITE_ZEROES over the whole blocks inside the range (reads back as zero). Without `noHole` the
   * server may free the space. With `fast`, a server that would zero slowly fails with ENOTSUP.
   * Returns the range zeroed.
   */
  async zero(offset: number, length: number, opts: { noHole?: boolean; fast?: boolean } = {}): Promise<[number, number]> {
    const [s, e] = this.inward(offset, length);
    if (e <= s) return [s, s];
    const flags = (opts.noHole ? P.CMD_FLAG.NO_HOLE : 0) | (opts.fast ? P.CMD_FLAG.FAST_ZERO : 0);
    await this.bigRequests(P.CMD.WRITE_ZEROES, flags, s, e);
    return [s, e];
  }

  /** TRIM (a hint: the content afterwards is unspecified) over the whole blocks inside the range. */
  async trim(offset: number, length: number): Promise<void> {
    const [s, e] = this.inward(offset, length);
    if (e > s) await this.bigRequests(P.CMD.TRIM, 0, s, e);
  }

  async flush(): Promise<void> {
    if (this.has(P.TFLAG.SEND_FLUSH)) await this.conn.request(P.CMD.FLUSH, 0, 0, 0);
  }

  /**
   * base:allocation of [offset, offset+length): descriptors from `offset` on, covering at least
   * part of the range (the server may answer less than asked). Undefined without block status.
   */
  async blockStatus(offset: number, length: number): Promise<StatusExtent[] | undefined> {
    if (!this.canBlockStatus) return undefined;
    const n = Math.min(length, this.bigMax());
    const r = await this.conn.request(P.CMD.BLOCK_STATUS, 0, offset, n);
    return r ?? [];
  }

  async close(): Promise<void> {
    await Promise.all(this.conns.map((c) => c.close()));
  }
}
