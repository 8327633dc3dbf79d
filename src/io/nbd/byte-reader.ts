/**
 * Exact reads from a stream socket: the NBD handshake and reply parser ask for "n bytes" and wait
 * until they have arrived. Chunks are kept as they come and copied out once. When the stream ends
 * or fails, every waiting and later read fails with the reason given to `fail` (or a generic one).
 */
import type { Duplex } from 'node:stream';

export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve: () => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;
  private stream: Duplex | undefined;
  /** Add received bytes (the stream's 'data', or a socket's onread callback with a copy). */
  readonly push = (b: Buffer): void => {
    this.chunks.push(b);
    this.buffered += b.length;
    const w = this.waiter;
    if (w && this.buffered >= w.n) {
      this.waiter = undefined;
      w.resolve();
    }
  };
  private readonly onEnd = (): void => this.fail(new Error('the server closed the connection'));
  private readonly onError = (e: Error): void => this.fail(new Error(`connection failed: ${(e as NodeJS.ErrnoException).code ?? e.message}`));

  attach(stream: Duplex): void {
    this.detach();
    this.stream = stream;
    stream.on('data', this.push);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
  }

  detach(): void {
    const s = this.stream;
    if (!s) return;
    s.off('data', this.push);
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
    const out = Buffer.allocUnsafe(n);
    await this.takeInto(out, 0, n);
    return out;
  }

  /** Copy the next n bytes into target[at...]; target may be undefined to skip them. */
  async takeInto(target: Buffer | undefined, at: number, n: number): Promise<void> {
    while (n > 0) {
      const w = this.wait(1);
      if (w) await w;
      const head = this.chunks[0]!;
      const k = Math.min(n, head.length);
      if (target) head.copy(target, at, 0, k);
      if (k === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(k);
      this.buffered -= k;
      at += k;
      n -= k;
    }
  }
}
