/**
 * One NBD connection in the transmission phase (doc/proto.md): requests tagged with a cookie,
 * replies matched by cookie in whatever order they come, simple or structured. At most
 * `inFlight` requests are outstanding; each must be answered within `timeoutMs` or the connection
 * is failed (never a hang). A server that goes away fails every outstanding request with the reason.
 * Errors name the address, the request and its range. Replies are parsed as they arrive
 * (reply-parser.ts), so READ data is received straight into the caller's buffer.
 */
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { hex } from '../errors.js';
import { ByteReader } from './byte-reader.js';
import { Handshake, type ExportInfo } from './handshake.js';
import { NbdError } from './errors.js';
import { ReplyParser, type ReplyHandler, type ReplyTarget, type StatusExtent } from './reply-parser.js';
import * as P from './protocol.js';
import type { NbdAddress } from './uri.js';

export interface Timeouts {
  connectMs: number;
  requestMs: number;
}

export { NbdError, type StatusExtent };

interface Pending extends ReplyTarget {
  resolve: () => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

function describe(addr: NbdAddress, type: number, offset: number, length: number): string {
  const name = P.CMD_NAMES[type] ?? `command ${type}`;
  return type === P.CMD.FLUSH ? `${addr.display}: FLUSH` : `${addr.display}: ${name} at ${hex(offset)} (+${length})`;
}

async function openStream(addr: NbdAddress, reader: ByteReader): Promise<Socket> {
  // Plain connections read through `onread`; a TLS one needs the socket's ordinary 'data' events.
  const onread = addr.tls ? {} : { onread: { buffer: reader.nextBuffer, callback: reader.received } };
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
  private corked = false;

  private constructor(
    readonly addr: NbdAddress,
    private readonly stream: Duplex,
    private readonly reader: ByteReader,
    readonly info: ExportInfo,
    private readonly timeouts: Timeouts,
    private readonly inFlight: number,
  ) {
    const handler: ReplyHandler = {
      lookup: (high, cookie) => this.lookup(high, cookie),
      complete: (cookie, p) => this.settle(cookie, p as Pending),
      describe: (p) => describe(this.addr, p.type, p.offset, p.length),
    };
    reader.onFailure = (e) => {
      if (!this.closing) this.fail(e instanceof NbdError ? e : new NbdError(e.message));
    };
    reader.handOver(new ReplyParser(handler));
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
        this.send(h, data);
      });
    } finally {
      this.release();
    }
  }

  /**
   * Write a request. Requests made in one turn of the event loop (a read is cut into many) go out
   * together in one system call: the socket is corked until the pending callbacks have run.
   */
  private send(header: Buffer, data: Buffer | undefined): void {
    if (!this.corked) {
      this.corked = true;
      this.stream.cork();
      process.nextTick(() => {
        this.corked = false;
        this.stream.uncork();
      });
    }
    this.stream.write(header);
    if (data) this.stream.write(data);
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
