/**
 * One NBD connection in the transmission phase (doc/proto.md): requests tagged with a cookie,
 * replies matched by cookie in whatever order they come, simple or structured. At most
 * `inFlight` requests are outstanding; each must be answered within `timeoutMs` or the connection
 * is failed (never a hang). A server that goes away fails every outstanding request with the reason.
 * Errors name the address, the request and its range.
 */
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { FatalError, hex } from '../errors.js';
import { ByteReader } from './byte-reader.js';
import { Handshake, type ExportInfo } from './handshake.js';
import * as P from './protocol.js';
import type { NbdAddress } from './uri.js';

export interface Timeouts {
  connectMs: number;
  requestMs: number;
}

/** A block status descriptor: `length` bytes with base:allocation `flags`. */
export interface StatusExtent {
  length: number;
  flags: number;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  /** READ: where the data goes. */
  buf?: Buffer;
  status?: StatusExtent[];
  error?: string;
  resolve: () => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class NbdError extends FatalError {
  constructor(
    message: string,
    /** The server's errno name for a failed request (ENOTSUP, EINVAL...), when it gave one. */
    readonly errno?: string,
  ) {
    super(message);
    this.name = 'NbdError';
  }
}

function describe(addr: NbdAddress, type: number, offset: number, length: number): string {
  const name = P.CMD_NAMES[type] ?? `command ${type}`;
  return type === P.CMD.FLUSH ? `${addr.display}: FLUSH` : `${addr.display}: ${name} at ${hex(offset)} (+${length})`;
}

/** Socket reads go into one buffer this big (fewer system calls and allocations than 64 KiB 'data' chunks). */
const READ_BUFFER = 1 << 20;

async function openStream(addr: NbdAddress, reader: ByteReader): Promise<Socket> {
  // Plain connections read through `onread`; a TLS one needs the socket's ordinary 'data' events.
  const onread = addr.tls ? {} : { onread: { buffer: Buffer.allocUnsafe(READ_BUFFER), callback: (n: number, buf: Uint8Array): boolean => (reader.push(Buffer.from(buf.buffer, buf.byteOffset, n), true), true) } };
  return new Promise((resolve, reject) => {
    const s = addr.socket !== undefined ? netConnect({ path: addr.socket, ...onread }) : netConnect({ host: addr.host!, port: addr.port!, ...onread });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

function tlsOptions(addr: NbdAddress): { ca?: Buffer; cert?: Buffer; key?: Buffer } {
  const dir = addr.tlsCertificates;
  if (!dir) return {};
  const read = (f: string): Buffer | undefined => {
    try {
      return readFileSync(join(dir, f));
    } catch {
      return undefined;
    }
  };
  const out: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
  const ca = read('ca-cert.pem');
  const cert = read('client-cert.pem');
  const key = read('client-key.pem');
  if (ca) out.ca = ca;
  if (cert && key) {
    out.cert = cert;
    out.key = key;
  }
  return out;
}

async function upgradeTls(addr: NbdAddress, plain: Socket): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({
      socket: plain,
      ...tlsOptions(addr),
      rejectUnauthorized: addr.tlsVerifyPeer,
      // RFC 6066 allows no IP address as the server name (Node warns); the certificate is still checked against it.
      ...(addr.host ? { host: addr.host } : {}),
      ...(isIP(addr.tlsHostname ?? addr.host ?? '') ? {} : { servername: addr.tlsHostname ?? addr.host ?? 'localhost' }),
      ...(addr.tlsVerifyPeer ? {} : { checkServerIdentity: () => undefined }),
    });
    s.once('secureConnect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', (e: Error) => reject(new Error(`TLS handshake failed: ${(e as NodeJS.ErrnoException).code ?? e.message}`)));
  });
}

export class NbdConnection {
  private readonly pending = new Map<number, Pending>();
  private nextCookie = 1;
  private failure: NbdError | undefined;
  private readonly slots: Array<() => void> = [];
  private active = 0;
  private closing = false;

  private constructor(
    readonly addr: NbdAddress,
    private readonly stream: Duplex,
    private readonly reader: ByteReader,
    readonly info: ExportInfo,
    private readonly timeouts: Timeouts,
    private readonly inFlight: number,
  ) {
    void this.replyLoop();
  }

  static async open(addr: NbdAddress, timeouts: Timeouts, inFlight = 64): Promise<NbdConnection> {
    const reader = new ByteReader();
    let stream: Duplex | undefined;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      reader.fail(new Error('timed out'));
      stream?.destroy();
    }, timeouts.connectMs);
    try {
      let plain: Socket;
      try {
        plain = await Promise.race([
          openStream(addr, reader),
          new Promise<never>((_, reject) => setTimeout(() => reject(new Error('timed out')), timeouts.connectMs).unref()),
        ]);
      } catch (e) {
        throw new Error(`cannot connect: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
      stream = plain;
      reader.attach(plain);
      const hs = new Handshake(plain, reader, addr.exportName);
      const noZeroes = await hs.greet();
      if (addr.tls) {
        await hs.startTls();
        reader.detach();
        const secure = await upgradeTls(addr, plain);
        stream = secure;
        reader.attach(secure);
        hs.useStream(secure);
      }
      const info = await hs.negotiate(noZeroes);
      clearTimeout(timer);
      return new NbdConnection(addr, stream, reader, info, timeouts, inFlight);
    } catch (e) {
      clearTimeout(timer);
      stream?.destroy();
      const why = timedOut ? `no answer within ${timeouts.connectMs / 1000} s` : (e as Error).message;
      throw new NbdError(`${addr.display}: ${why}`);
    }
  }

  /** Fail the connection: every outstanding and later request gets this error. */
  private fail(e: NbdError): void {
    if (!this.failure) this.failure = e;
    this.reader.fail(e);
    for (const [cookie, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(cookie);
      p.reject(new NbdError(`${describe(this.addr, p.type, p.offset, p.length)} failed: ${e.message}`));
    }
    this.stream.destroy();
  }

  /** Requests sent and not yet answered, with those waiting for a slot. */
  get load(): number {
    return this.active + this.slots.length;
  }

  private async acquire(): Promise<void> {
    if (this.active < this.inFlight) {
      this.active++;
      return;
    }
    await new Promise<void>((resolve) => this.slots.push(resolve));
  }

  private release(): void {
    const next = this.slots.shift();
    if (next) next();
    else this.active--;
  }

  /**
   * Send one request and wait for its reply. `data` is the WRITE payload; `buf` receives READ
   * data; BLOCK_STATUS resolves with the descriptors.
   */
  async request(type: number, flags: number, offset: number, length: number, data?: Buffer, buf?: Buffer): Promise<StatusExtent[] | undefined> {
    await this.acquire();
    try {
      if (this.failure) throw new NbdError(`${describe(this.addr, type, offset, length)} failed: ${this.failure.message}`);
      const cookie = this.nextCookie++;
      const h = Buffer.allocUnsafe(28);
      h.writeUInt32BE(P.REQUEST_MAGIC, 0);
      h.writeUInt16BE(flags, 4);
      h.writeUInt16BE(type, 6);
      h.writeUInt32BE(0, 8);
      h.writeUInt32BE(cookie, 12);
      h.writeBigUInt64BE(BigInt(offset), 16);
      h.writeUInt32BE(length, 24);
      return await new Promise<StatusExtent[] | undefined>((resolve, reject) => {
        const p: Pending = {
          type,
          offset,
          length,
          ...(buf ? { buf } : {}),
          resolve: () => resolve(p.status),
          reject,
          timer: setTimeout(() => {
            this.fail(new NbdError(`no reply to ${describe(this.addr, type, offset, length).replace(/^[^ ]*: /, '')} within ${this.timeouts.requestMs / 1000} s`));
          }, this.timeouts.requestMs),
        };
        if (type === P.CMD.BLOCK_STATUS) p.status = [];
        this.pending.set(cookie, p);
        this.stream.write(h);
        if (data) this.stream.write(data);
      });
    } finally {
      this.release();
    }
  }

  private settle(cookie: number, p: Pending): void {
    clearTimeout(p.timer);
    this.pending.delete(cookie);
    if (p.error !== undefined) p.reject(new NbdError(`${describe(this.addr, p.type, p.offset, p.length)} failed: ${p.error}`, p.error.split(' ')[0]));
    else p.resolve();
  }

  private lookup(cookieHigh: number, cookie: number): Pending {
    const p = cookieHigh === 0 ? this.pending.get(cookie) : undefined;
    if (!p) throw new NbdError(`the server answered a request that was not made (cookie ${cookie})`);
    return p;
  }

  private async replyLoop(): Promise<void> {
    try {
      for (;;) {
        const magic = (await this.reader.take(4)).readUInt32BE(0);
        if (magic === P.SIMPLE_REPLY_MAGIC) {
          const h = await this.reader.take(12);
          const cookie = h.readUInt32BE(8);
          const p = this.lookup(h.readUInt32BE(4), cookie);
          const err = h.readUInt32BE(0);
          if (err !== 0) p.error = P.errnoName(err);
          else if (p.type === P.CMD.READ) await this.reader.takeInto(p.buf, 0, p.length);
          this.settle(cookie, p);
        } else if (magic === P.STRUCTURED_REPLY_MAGIC) {
          const h = await this.reader.take(16);
          const flags = h.readUInt16BE(0);
          const type = h.readUInt16BE(2);
          const cookie = h.readUInt32BE(8);
          const p = this.lookup(h.readUInt32BE(4), cookie);
          const len = h.readUInt32BE(12);
          await this.chunk(p, type, len);
          if (flags & P.CHUNK_FLAG_DONE) this.settle(cookie, p);
        } else {
          throw new NbdError(`bad reply magic ${hex(magic)}`);
        }
      }
    } catch (e) {
      if (this.closing) return;
      const err = e instanceof NbdError ? e : new NbdError((e as Error).message);
      this.fail(err);
    }
  }

  private async chunk(p: Pending, type: number, len: number): Promise<void> {
    if (type === P.CHUNK.OFFSET_DATA) {
      const off = Number((await this.reader.take(8)).readBigUInt64BE(0)) - p.offset;
      const n = len - 8;
      if (off < 0 || off + n > p.length || !p.buf) throw new NbdError(`the server sent data outside ${describe(this.addr, p.type, p.offset, p.length)}`);
      await this.reader.takeInto(p.buf, off, n);
    } else if (type === P.CHUNK.OFFSET_HOLE) {
      const b = await this.reader.take(12);
      const off = Number(b.readBigUInt64BE(0)) - p.offset;
      const n = b.readUInt32BE(8);
      if (off < 0 || off + n > p.length || !p.buf) throw new NbdError(`the server sent a hole outside ${describe(this.addr, p.type, p.offset, p.length)}`);
      p.buf.fill(0, off, off + n);
    } else if (type === P.CHUNK.BLOCK_STATUS) {
      const b = await this.reader.take(len);
      for (let i = 4; i + 8 <= b.length; i += 8) p.status?.push({ length: b.readUInt32BE(i), flags: b.readUInt32BE(i + 4) });
    } else if (type & P.CHUNK_ERROR_BIT) {
      const b = await this.reader.take(len);
      const code = len >= 4 ? b.readUInt32BE(0) : 5;
      const mlen = len >= 6 ? b.readUInt16BE(4) : 0;
      const msg = b.subarray(6, 6 + mlen).toString('utf8');
      p.error = P.errnoName(code) + (msg ? ` (${msg})` : '');
    } else {
      await this.reader.takeInto(undefined, 0, len);
    }
  }

  /** Say goodbye (NBD_CMD_DISC) and close; outstanding requests are failed. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (!this.failure) {
      const h = Buffer.alloc(28);
      h.writeUInt32BE(P.REQUEST_MAGIC, 0);
      h.writeUInt16BE(P.CMD.DISC, 6);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 1000);
        this.stream.end(h, () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    this.fail(new NbdError('the connection was closed'));
  }
}
