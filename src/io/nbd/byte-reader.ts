/**
 * The receiving side of one NBD connection. During the handshake it gives exact reads ("the next
 * n bytes", waiting until they have arrived); afterwards (`handOver`) every byte goes to the
 * reply parser as it arrives. A plain socket receives through Node's `onread` (nextBuffer and
 * received): into a reused buffer, or straight into a READ's destination when the parser says a
 * payload comes next, so the data is copied once, by the kernel. A TLS socket gives 'data' chunks.
 * When the stream ends or fails, every waiting and later read fails with the reason given to
 * `fail`, and `onFailure` hears it once.
 */
import type { Duplex } from 'node:stream';

/** Socket reads go into one buffer this big when not straight into a READ's destination. */
const READ_BUFFER = 1 << 20;

/** Where bytes go after the handshake (see reply-parser.ts). */
export interface ByteSink {
  push(b: Buffer): void;
  received(buf: Buffer, n: number): void;
  directBuffer(): Buffer | undefined;
}

export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve: () => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;
  private stream: Duplex | undefined;
  private sink: ByteSink | undefined;
  private readonly readBuffer = Buffer.allocUnsafe(READ_BUFFER);
  /** Told of the first failure (the stream ended or failed, or the parser rejected what came). */
  onFailure: ((e: Error) => void) | undefined;

  /** For `onread.buffer`: where the socket receives next. */
  readonly nextBuffer = (): Buffer => this.sink?.directBuffer() ?? this.readBuffer;

  /** For `onread.callback`: `n` bytes arrived in `buf` (a buffer `nextBuffer` gave). */
  readonly received = (n: number, buf: Uint8Array): boolean => {
    if (this.failure) return true;
    if (this.sink) this.guard(() => this.sink!.received(buf as Buffer, n));
    else this.keep(Buffer.from(buf.subarray(0, n)));
    return true;
  };

  /** Add received bytes that stay valid ('data' chunks). */
  readonly push = (b: Buffer): void => {
    if (this.failure) return;
    if (this.sink) this.guard(() => this.sink!.push(b));
    else this.keep(b);
  };

  private guard(f: () => void): void {
    try {
      f();
    } catch (e) {
      this.fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private keep(b: Buffer): void {
    this.chunks.push(b);
    this.buffered += b.length;
    const w = this.waiter;
    if (w && this.buffered >= w.n) {
      this.waiter = undefined;
      w.resolve();
    }
  }

  /** From now on every byte goes to `sink`, starting with any already here. */
  handOver(sink: ByteSink): void {
    this.sink = sink;
    const rest = this.chunks;
    this.chunks = [];
    this.buffered = 0;
    for (const c of rest) this.push(c);
  }

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

  /** Fail every read from now on (the first reason wins). */
  fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(e);
    this.onFailure?.(e);
  }

  /** The next n bytes (handshake only). */
  async take(n: number): Promise<Buffer> {
    if (this.buffered < n) {
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve, reject) => {
        this.waiter = { n, resolve, reject };
      });
    }
    const out = Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const head = this.chunks[0]!;
      const k = Math.min(n - done, head.length);
      head.copy(out, done, 0, k);
      if (k === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(k);
      this.buffered -= k;
      done += k;
    }
    return out;
  }
}
