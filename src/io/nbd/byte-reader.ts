/**
 * Exact reads from a stream socket: the NBD handshake and reply parser ask for "n bytes" and wait
 * until they have arrived. A read waiting for bytes to land in a buffer of its own (READ payloads)
 * takes them straight from the incoming chunk, without an intermediate copy; other bytes are kept
 * as they come (copied first when the chunk is the socket's reused read buffer). When the stream
 * ends or fails, every waiting and later read fails with the reason given to `fail`.
 */
import type { Duplex } from 'node:stream';

const SLAB = 4 << 20;

interface Sink {
  target: Buffer | undefined;
  at: number;
  n: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve: () => void; reject: (e: Error) => void } | undefined;
  private sink: Sink | undefined;
  private failure: Error | undefined;
  private stream: Duplex | undefined;

  /**
   * Add received bytes: the stream's 'data' chunks, or (`transient`) a socket's reused onread
   * buffer, whose bytes must be copied before this returns.
   */
  readonly push = (b: Buffer, transient = false): void => {
    let off = 0;
    const s = this.sink;
    if (s && this.buffered === 0) {
      const k = Math.min(s.n, b.length);
      if (s.target) b.copy(s.target, s.at, 0, k);
      s.at += k;
      s.n -= k;
      off = k;
      if (s.n === 0) {
        this.sink = undefined;
        s.resolve();
      }
    }
    if (off >= b.length) return;
    let rest: Buffer;
    if (transient) rest = this.keep(b, off);
    else rest = off ? b.subarray(off) : b;
    this.chunks.push(rest);
    this.buffered += rest.length;
    const w = this.waiter;
    if (w && this.buffered >= w.n) {
      this.waiter = undefined;
      w.resolve();
    }
  };
  private readonly onData = (b: Buffer): void => this.push(b);
  /** Where bytes of transient chunks are kept until read: reused from its start whenever all was read (no fresh pages). */
  private slab = Buffer.allocUnsafe(0);
  private slabUsed = 0;

  private keep(b: Buffer, off: number): Buffer {
    const n = b.length - off;
    if (this.buffered === 0) this.slabUsed = 0;
    if (this.slabUsed + n > this.slab.length) {
      // Chunks still unread may point into the old slab: it stays theirs.
      this.slab = Buffer.allocUnsafe(Math.max(SLAB, n));
      this.slabUsed = 0;
    }
    const out = this.slab.subarray(this.slabUsed, this.slabUsed + n);
    b.copy(out, 0, off);
    this.slabUsed += n;
    return out;
  }
  private readonly onEnd = (): void => this.fail(new Error('the server closed the connection'));
  private readonly onError = (e: Error): void => this.fail(new Error(`connection failed: ${(e as NodeJS.ErrnoException).code ?? e.message}`));

  attach(stream: Duplex): void {
    this.detach();
    this.stream = stream;
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
  }

  detach(): void {
    const s = this.stream;
    if (!s) return;
    s.off('data', this.onData);
    s.off('end', this.onEnd);
    s.off('close', this.onEnd);
    s.off('error', this.onError);
    this.stream = undefined;
  }

  get pending(): number {
    return this.buffered;
  }

  /** Fail every read from now on (the first reason wins). */
  fail(e: Error): void {
    if (!this.failure) this.failure = e;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(this.failure);
    const s = this.sink;
    this.sink = undefined;
    s?.reject(this.failure);
  }

  private wait(n: number): Promise<void> | undefined {
    if (this.buffered >= n) return undefined;
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
    });
  }

  /** The next n bytes. */
  async take(n: number): Promise<Buffer> {
    const w = this.wait(n);
    if (w) await w;
    const out = Buffer.allocUnsafe(n);
    this.copyBuffered(out, 0, n);
    return out;
  }

  /** Move up to n buffered bytes into target[at...] (or drop them); returns how many. */
  private copyBuffered(target: Buffer | undefined, at: number, n: number): number {
    let done = 0;
    while (done < n && this.chunks.length) {
      const head = this.chunks[0]!;
      const k = Math.min(n - done, head.length);
      if (target) head.copy(target, at + done, 0, k);
      if (k === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(k);
      this.buffered -= k;
      done += k;
    }
    return done;
  }

  /** Copy the next n bytes into target[at...]; target may be undefined to skip them. */
  async takeInto(target: Buffer | undefined, at: number, n: number): Promise<void> {
    const k = this.copyBuffered(target, at, n);
    if (k === n) return;
    if (this.failure) throw this.failure;
    await new Promise<void>((resolve, reject) => {
      this.sink = { target, at: at + k, n: n - k, resolve, reject };
    });
  }
}
