/**
 * Replies of the transmission phase (doc/proto.md "Simple reply message" and "Structured reply
 * chunk message"), parsed synchronously as bytes arrive, so that when a READ payload comes next
 * the socket can receive it straight into the caller's buffer (`directBuffer`), with no copy in
 * between. Facts relied on:
 * - a simple reply is magic, error (u32), cookie (u64), then for a successful READ exactly
 *   `length` bytes of data; a structured chunk is magic, flags (u16), type (u16), cookie (u64),
 *   payload length (u32), then the payload;
 * - OFFSET_DATA carries an absolute offset (u64) then data; OFFSET_HOLE an offset (u64) and a
 *   length (u32); BLOCK_STATUS a context id (u32) then (length, flags) pairs; error chunks
 *   (type bit 15) an errno (u32), a message length (u16) and the message;
 * - the DONE flag ends a structured reply; chunks of types we do not know are skipped.
 * Every reply is checked against the request it answers; a violation throws (the connection fails).
 */
import { NbdError } from './errors.js';
import { hex } from '../errors.js';
import * as P from './protocol.js';

/** A block status descriptor: `length` bytes with base:allocation `flags`. */
export interface StatusExtent {
  length: number;
  flags: number;
}

/** What a reply is matched to: the request, and where its answer goes. */
export interface ReplyTarget {
  type: number;
  offset: number;
  length: number;
  /** READ: where the data goes. */
  buf?: Buffer;
  status?: StatusExtent[];
  /** The server's error for this request (errno name and message). */
  error?: string;
}

export interface ReplyHandler {
  /** The request a reply answers; throws when none was made with that cookie. */
  lookup(cookieHigh: number, cookie: number): ReplyTarget;
  /** The request's reply is complete (successful or with `error` set). */
  complete(cookie: number, target: ReplyTarget): void;
  /** How a request is named in errors. */
  describe(target: ReplyTarget): string;
}

/** Payloads shorter than this are copied from the socket's buffer: receiving them apart costs more. */
const MIN_DIRECT = 64 << 10;
/** A structured reply chunk's header (20 bytes) and an OFFSET_DATA chunk's offset (8). */
const HEADER_AHEAD = 28;
/** Largest non-data payload accepted (block status descriptors, error messages). */
const MAX_META_PAYLOAD = 64 << 20;

const enum State {
  /** Gathering `need` bytes into `meta`, then `onMeta` runs. */
  Meta,
  /** `remaining` payload bytes go to `target` at `at` (dropped when there is no target). */
  Payload,
}

export class ReplyParser {
  private state = State.Meta;
  private readonly header = Buffer.allocUnsafe(32);
  /** Where the bytes being gathered go: `header`, or a buffer sized for a long block status or error chunk. */
  private meta: Buffer = this.header;
  private have = 0;
  private need = 4;
  private onMeta: () => void = () => this.magic();
  private target: Buffer | undefined;
  private at = 0;
  private remaining = 0;
  private afterPayload: () => void = () => undefined;
  /** The buffer last handed out by `directBuffer`, so its bytes are known to be in place already. */
  private lent: Buffer | undefined;
  private readonly small = Buffer.allocUnsafe(HEADER_AHEAD);
  /** Was the last payload a long READ one (so more are likely to follow)? */
  private streaming = false;

  // The reply being parsed.
  private cookie = 0;
  private current: ReplyTarget | undefined;
  private done = false;

  constructor(private readonly handler: ReplyHandler) {}

  /**
   * Where the socket should receive next, or undefined for the caller's shared buffer: the rest of
   * a READ payload in its destination, when that comes next and is long. While READ data
   * streams in, a reply's header is received alone (a small buffer sized to end where the payload
   * starts: 28 bytes are a structured chunk's header and a data chunk's offset), so that a large
   * shared read does not swallow the payload that follows it.
   */
  directBuffer(): Buffer | undefined {
    if (this.state === State.Payload) {
      // The rest of a long payload goes in place however little is left (a shared read would run into the next reply).
      if (!this.target || !this.streaming) return undefined;
      this.lent = this.target.subarray(this.at, this.at + this.remaining);
      return this.lent;
    }
    const n = this.have === 0 && this.need === 4 ? HEADER_AHEAD : this.need - this.have;
    return this.streaming && n <= HEADER_AHEAD ? this.small.subarray(0, n) : undefined;
  }

  /** `n` bytes arrived in `buf`: the buffer `directBuffer` lent (already in place) or any other (copied from). */
  received(buf: Buffer, n: number): void {
    if (buf === this.lent) {
      this.lent = undefined;
      this.at += n;
      this.remaining -= n;
      if (this.remaining === 0) this.endPayload();
      return;
    }
    this.push(buf.subarray(0, n));
  }

  /** Parse bytes that arrived; those kept are copied, so `b` may be reused afterwards. */
  push(b: Buffer): void {
    let i = 0;
    while (i < b.length) {
      if (this.state === State.Payload) {
        const k = Math.min(this.remaining, b.length - i);
        if (this.target) b.copy(this.target, this.at, i, i + k);
        this.at += k;
        this.remaining -= k;
        i += k;
        if (this.remaining === 0) this.endPayload();
      } else {
        const k = Math.min(this.need - this.have, b.length - i);
        b.copy(this.meta, this.have, i, i + k);
        this.have += k;
        i += k;
        if (this.have === this.need) this.onMeta();
      }
    }
  }

  private expect(n: number, then: () => void, into: Buffer = this.header): void {
    this.state = State.Meta;
    this.meta = into;
    this.have = 0;
    this.need = n;
    this.onMeta = then;
    // A zero-length wait completes at once (pushes only come with bytes).
    if (n === 0) then();
  }

  private payload(target: Buffer | undefined, at: number, n: number, then: () => void): void {
    this.afterPayload = then;
    this.streaming = target !== undefined && n >= MIN_DIRECT;
    if (n === 0) return then();
    this.state = State.Payload;
    this.target = target;
    this.at = at;
    this.remaining = n;
  }

  private endPayload(): void {
    this.target = undefined;
    this.afterPayload();
  }

  private next(): void {
    this.current = undefined;
    this.expect(4, () => this.magic());
  }

  private finish(): void {
    if (this.current) this.handler.complete(this.cookie, this.current);
    this.next();
  }

  private magic(): void {
    const magic = this.meta.readUInt32BE(0);
    if (magic === P.SIMPLE_REPLY_MAGIC) this.expect(12, () => this.simple());
    else if (magic === P.STRUCTURED_REPLY_MAGIC) this.expect(16, () => this.structured());
    else throw new NbdError(`bad reply magic ${hex(magic)}`);
  }

  private simple(): void {
    const h = this.meta;
    const err = h.readUInt32BE(0);
    this.cookie = h.readUInt32BE(8);
    const p = this.handler.lookup(h.readUInt32BE(4), this.cookie);
    this.current = p;
    if (err !== 0) p.error = P.errnoName(err);
    else if (p.type === P.CMD.READ) return this.payload(p.buf, 0, p.length, () => this.finish());
    this.finish();
  }

  private structured(): void {
    const h = this.meta;
    const flags = h.readUInt16BE(0);
    const type = h.readUInt16BE(2);
    this.cookie = h.readUInt32BE(8);
    const p = this.handler.lookup(h.readUInt32BE(4), this.cookie);
    this.current = p;
    this.done = (flags & P.CHUNK_FLAG_DONE) !== 0;
    const len = h.readUInt32BE(12);
    const end = (): void => (this.done ? this.finish() : this.next());
    if (type === P.CHUNK.OFFSET_DATA) {
      if (len < 8) throw new NbdError(`the server sent a data chunk too short (${len} bytes) for ${this.handler.describe(p)}`);
      this.expect(8, () => {
        const off = Number(this.meta.readBigUInt64BE(0)) - p.offset;
        const n = len - 8;
        if (off < 0 || off + n > p.length || !p.buf) throw new NbdError(`the server sent data outside ${this.handler.describe(p)}`);
        this.payload(p.buf, off, n, end);
      });
    } else if (type === P.CHUNK.OFFSET_HOLE) {
      if (len !== 12) throw new NbdError(`the server sent a hole chunk of ${len} bytes for ${this.handler.describe(p)}`);
      this.expect(12, () => {
        const off = Number(this.meta.readBigUInt64BE(0)) - p.offset;
        const n = this.meta.readUInt32BE(8);
        if (off < 0 || off + n > p.length || !p.buf) throw new NbdError(`the server sent a hole outside ${this.handler.describe(p)}`);
        p.buf.fill(0, off, off + n);
        end();
      });
    } else if (type === P.CHUNK.BLOCK_STATUS || type & P.CHUNK_ERROR_BIT) {
      this.streaming = false;
      if (len > MAX_META_PAYLOAD) throw new NbdError(`the server sent a ${len}-byte reply chunk for ${this.handler.describe(p)}`);
      this.expect(
        len,
        () => {
          const b = this.meta.subarray(0, len);
          if (type === P.CHUNK.BLOCK_STATUS) {
            for (let i = 4; i + 8 <= b.length; i += 8) p.status?.push({ length: b.readUInt32BE(i), flags: b.readUInt32BE(i + 4) });
          } else {
            const code = len >= 4 ? b.readUInt32BE(0) : 5;
            const mlen = len >= 6 ? b.readUInt16BE(4) : 0;
            const msg = b.subarray(6, 6 + mlen).toString('utf8');
            p.error = P.errnoName(code) + (msg ? ` (${msg})` : '');
          }
          end();
        },
        len <= this.header.length ? this.header : Buffer.allocUnsafe(len),
      );
    } else {
      this.payload(undefined, 0, len, end);
    }
  }
}
