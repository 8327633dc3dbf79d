/**
 * Writes a new qcow2 image front to back. Data arrives in ascending writes; each guest cluster is
 * assembled, dropped if all zero (it stays unallocated and reads as zero), optionally compressed on
 * the thread pool, and appended. L2 tables are written as soon as writes move past their range;
 * L1 table, refcounts and header are written by finish().
 *
 * With a backing file (an overlay), unwritten clusters fall through to it, so a written all-zero
 * cluster becomes a zero cluster instead (v3), or is stored as data (v2 cannot say "zero").
 *
 * Layout: header, refcount block 0, L1 table, then L2 tables and data in guest order (with
 * refcount blocks where allocation reaches a new block's range), refcount table last.
 */
import { writeFile } from 'node:fs/promises';
import { BlockFile } from '../../io/file.js';
import { SparsifyError, hex } from '../../io/errors.js';
import type { FormatOptions, ImageWriter, TransferMode, TransferSupport, WriterContext } from '../types.js';
import { cloneRange } from '../../io/syscalls.js';
import { isTransferUnsupported, probeHostTransfer } from '../../io/transfer.js';
import { HostAllocator } from './allocator.js';
import { compressClusterAsync } from './compressor.js';
import { COMPAT_LAZY_REFCOUNTS, EXT_BACKING_FORMAT, INCOMPAT_COMPRESSION, INCOMPAT_EXTL2, QCOW2_MAGIC } from './header.js';
import { OutputStream } from './output.js';
import { parseCreateOptions, type Qcow2CreateOptions } from './options.js';

const COPIED = 0x80000000; // bit 63, in the high word
const COMPRESSED = 0x40000000; // bit 62, in the high word

/** A cluster being compressed; `raw` keeps it for when compression does not shrink it. */
interface Compressing {
  cluster: number;
  /** An all-zero cluster of an overlay: it becomes a zero cluster, whatever compression gives. */
  zero: boolean;
  raw: Buffer;
  result: Promise<Buffer | undefined>;
}

/** Most 64 KiB clusters being compressed at once, whatever the core count. */
const MAX_COMPRESSING = 128;
/** Buffer for copying cloned clusters by hand when the host stops sharing blocks midway. */
const FALLBACK_COPY_BYTES = 4 << 20;

export class Qcow2Writer implements ImageWriter {
  readonly format = 'qcow2';
  private readonly cs: number;
  private readonly l2Entries: number;
  private readonly entryBytes: number;
  private readonly clusters: number;
  private readonly l1: Buffer;
  private l1Offset = 0;
  private readonly zero: Buffer;
  /** L2 table being filled: its index in L1, host offset and contents. */
  private l2Index = -1;
  private l2Host = 0;
  private readonly l2: Buffer;
  /** Cluster being assembled from unaligned writes. */
  private partial: { cluster: number; buf: Buffer } | undefined;
  private lastEnd = 0;
  /** preallocation=metadata: clusters below this are allocated. */
  private preallocNext = 0;
  /** Clusters being compressed, in guest order. */
  private readonly queue: Compressing[] = [];
  private readonly compress: boolean;
  private readonly maxInFlight: number;
  private chain: Promise<void> = Promise.resolve();
  private done = false;

  private constructor(
    private readonly path: string,
    private readonly file: BlockFile,
    private readonly out: OutputStream,
    private readonly alloc: HostAllocator,
    private readonly opts: Qcow2CreateOptions,
    readonly virtualSize: number,
    compress: boolean,
    threads: number,
    private readonly backing: { file: Buffer; format?: Buffer } | undefined,
  ) {
    this.cs = 2 ** opts.clusterBits;
    this.entryBytes = opts.extendedL2 ? 16 : 8;
    this.l2Entries = this.cs / this.entryBytes;
    this.clusters = Math.ceil(virtualSize / this.cs);
    this.l1 = Buffer.alloc(Math.max(1, Math.ceil(this.clusters / this.l2Entries)) * 8);
    this.zero = Buffer.alloc(this.cs);
    this.l2 = Buffer.alloc(this.cs);
    this.compress = compress;
    // Enough clusters in flight to keep every core busy, few enough to bound memory on any host
    // (each holds its data and output; only the ones running hold compressor state).
    this.maxInFlight = Math.min(MAX_COMPRESSING, Math.max(8, threads * 2)) * Math.max(1, Math.floor(65536 / this.cs));
  }

  static async create(path: string, virtualSize: number, options: FormatOptions, ctx: WriterContext): Promise<Qcow2Writer> {
    const opts = parseCreateOptions(options);
    if (ctx.compress && opts.preallocation !== 'off') {
      throw new SparsifyError('qcow2: --compress cannot be combined with preallocation=metadata');
    }
    if (!Number.isSafeInteger(virtualSize) || virtualSize < 0) throw new SparsifyError(`qcow2: invalid virtual size ${virtualSize}`);
    const backing = ctx.backing && backingFields(ctx.backing, opts);
    // qemu rounds the virtual size up to whole sectors.
    const size = Math.ceil(virtualSize / 512) * 512;
    const cs = 2 ** opts.clusterBits;
    const l1Bytes = Math.ceil(Math.ceil(size / cs) / (cs / (opts.extendedL2 ? 16 : 8))) * 8;
    if (l1Bytes > 32 << 20) {
      throw new SparsifyError(`qcow2: virtual size ${size} needs an L1 table larger than qemu's 32 MiB limit; use a larger cluster_size`);
    }
    await writeFile(path, '');
    const file = await BlockFile.open(path, 'r+');
    const out = new OutputStream(file, cs);
    const alloc = new HostAllocator(cs, opts.refcountOrder, (buf, off) => out.writeAt(buf, off));
    const w = new Qcow2Writer(path, file, out, alloc, opts, size, ctx.compress, ctx.threads, backing);
    alloc.reserveHeader();
    w.l1Offset = await alloc.allocClusters(Math.ceil(w.l1.length / cs));
    return w;
  }

  get allocationUnit(): number {
    return this.cs;
  }

  /** Several calls may be in flight: they are placed in order, and their writes wait their turn without holding the caller. */
  readonly concurrentWrites = true;

  write(buf: Buffer, offset: number): Promise<void> {
    // Calls are queued so that a caller that does not await each write still gets them in order.
    // The next one is placed as soon as this one is; `buf` is free once the writes lent from it are done.
    const placed = this.chain.then(() => this.doWrite(buf, offset));
    this.chain = placed.then(
      () => undefined,
      () => undefined,
    );
    return placed.then(async (lent) => void (await Promise.all(lent)));
  }

  private checkOrder(offset: number, length: number): void {
    if (this.done) throw new SparsifyError('qcow2: write after finish');
    if (offset < this.lastEnd) throw new SparsifyError(`qcow2: write at ${hex(offset)} goes backwards (previous write ended at ${hex(this.lastEnd)})`);
    if (offset + length > this.virtualSize) throw new SparsifyError(`qcow2: write at ${hex(offset)} (+${length}) past end of disk (${hex(this.virtualSize)})`);
    this.lastEnd = offset + length;
  }

  /** Data clusters start on cluster boundaries, so whole clusters can share blocks with a source on the same host filesystem. */
  async transferSupport(source: BlockFile, sampleOffset: number): Promise<TransferSupport> {
    const none = { clone: false, cloneAlignment: this.cs, copy: false };
    if (this.compress) return none;
    const host = await probeHostTransfer(source, sampleOffset, this.path);
    return { ...none, clone: host.clone && this.cs % host.blockSize === 0 };
  }

  transfer(source: BlockFile, fileOffset: number, offset: number, length: number, mode: TransferMode): Promise<boolean> {
    const p = this.chain.then(() => this.doTransfer(source, fileOffset, offset, length, mode));
    this.chain = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  }

  /** Give whole guest clusters host clusters, then clone the source into them, one host-contiguous run at a time. */
  private async doTransfer(source: BlockFile, fileOffset: number, offset: number, length: number, mode: TransferMode): Promise<boolean> {
    const cs = this.cs;
    if (mode !== 'clone' || this.compress || offset % cs !== 0 || length % cs !== 0 || fileOffset % cs !== 0) return false;
    this.checkOrder(offset, length);
    await this.flushPartial();
    const first = offset / cs;
    if (this.opts.preallocation === 'metadata') await this.preallocate(first);
    let run = { guest: offset, host: -1, len: 0 };
    for (let c = first; c < first + length / cs; c++) {
      const host = await this.placeData(c, undefined);
      if (run.len && host === run.host + run.len) run.len += cs;
      else {
        if (run.len) await this.cloneRun(source, fileOffset + (run.guest - offset), run.host, run.len);
        run = { guest: c * cs, host, len: cs };
      }
    }
    if (run.len) await this.cloneRun(source, fileOffset + (run.guest - offset), run.host, run.len);
    if (this.opts.preallocation === 'metadata') this.preallocNext = Math.max(this.preallocNext, first + length / cs);
    return true;
  }

  /** The clusters are already mapped: if the host refuses to share blocks after all, copy the bytes by hand. */
  private async cloneRun(source: BlockFile, from: number, host: number, len: number): Promise<void> {
    // Staged appends must not zero-fill a gap that covers cloned clusters later.
    await this.out.drain();
    try {
      await cloneRange(source.fd, from, this.file.fd, host, len);
      return;
    } catch (e) {
      if (!isTransferUnsupported(e)) throw e;
    }
    const buf = Buffer.allocUnsafe(Math.min(len, FALLBACK_COPY_BYTES));
    for (let done = 0; done < len; done += buf.length) {
      const view = buf.subarray(0, Math.min(buf.length, len - done));
      await source.readZeroPadded(view, from + done);
      await this.file.write(view, host + done);
    }
  }

  /** Place `buf`; returns the writes still reading it (see OutputStream.appendFrom). */
  private async doWrite(buf: Buffer, offset: number): Promise<Array<Promise<void>>> {
    this.checkOrder(offset, buf.length);
    const end = offset + buf.length;
    const cs = this.cs;
    const lent: Array<Promise<void>> = [];
    // Whole data clusters placed on consecutive host clusters, written together from `buf`.
    let run: { from: number; host: number; len: number } | undefined;
    const writeRun = async (): Promise<void> => {
      if (run) {
        const { done } = await this.out.appendFrom(buf.subarray(run.from, run.from + run.len), run.host);
        // Awaited by write(); a failure must not count as unhandled before then.
        done.catch(() => undefined);
        lent.push(done);
      }
      run = undefined;
    };
    try {
      let pos = offset;
      while (pos < end) {
        const cluster = Math.floor(pos / cs);
        const within = pos - cluster * cs;
        const n = Math.min(cs - within, end - pos);
        const data = buf.subarray(pos - offset, pos - offset + n);
        if (n === cs && this.lendable(data)) {
          const host = await this.placeData(cluster, undefined);
          if (run && host === run.host + run.len) run.len += cs;
          else {
            await writeRun();
            run = { from: pos - offset, host, len: cs };
          }
          pos += n;
          continue;
        }
        await writeRun();
        if (this.partial && this.partial.cluster !== cluster) await this.flushPartial();
        if (n === cs) {
          await this.emit(cluster, data);
        } else {
          if (!this.partial) this.partial = { cluster, buf: Buffer.alloc(cs) };
          data.copy(this.partial.buf, within);
          if (within + n === cs) await this.flushPartial();
        }
        pos += n;
      }
      await writeRun();
    } catch (e) {
      // The caller may reuse `buf` once this rejects.
      await Promise.allSettled(lent);
      throw e;
    }
    return lent;
  }

  /**
   * Can this whole cluster be written from the caller's buffer as it is (what emit would do with
   * it is to place it as plain data)?
   */
  private lendable(data: Buffer): boolean {
    return !this.compress && this.opts.preallocation !== 'metadata' && !this.partial && !data.equals(this.zero);
  }

  private async flushPartial(): Promise<void> {
    const p = this.partial;
    this.partial = undefined;
    if (p) await this.emit(p.cluster, p.buf);
  }

  /** One complete guest cluster, in ascending order. `data` is only valid during this call. */
  private async emit(cluster: number, data: Buffer): Promise<void> {
    // Without a backing file an unallocated cluster reads as zero; over one, only a zero cluster does.
    const isZero = data.equals(this.zero);
    if (isZero && !this.backing) return;
    const zeroCluster = isZero && this.opts.version === 3;
    if (this.opts.preallocation === 'metadata') await this.preallocate(cluster);
    if (!this.compress) {
      if (zeroCluster) await this.placeZero(cluster);
      else await this.placeData(cluster, data);
      return;
    }
    // Queued in order with the rest, so L2 tables still fill front to back.
    const raw = Buffer.from(data);
    const result = zeroCluster ? Promise.resolve(undefined) : compressClusterAsync(raw, this.opts.compressionType);
    result.catch(() => undefined); // awaited in order below; avoid an unhandled rejection meanwhile
    this.queue.push({ cluster, zero: zeroCluster, raw, result });
    if (this.queue.length >= this.maxInFlight) await this.placeNext();
  }

  /** Place the oldest cluster: keeps host layout in guest order, whatever the threads' timing. */
  private async placeNext(): Promise<void> {
    const c = this.queue.shift()!;
    const compressed = await c.result;
    if (c.zero) await this.placeZero(c.cluster);
    else if (compressed) await this.placeCompressed(c.cluster, compressed);
    else await this.placeData(c.cluster, c.raw);
  }

  /** Make the L2 table covering `cluster` current, writing out the previous one. */
  private async useL2(cluster: number): Promise<number> {
    const index = Math.floor(cluster / this.l2Entries);
    if (index !== this.l2Index) {
      await this.writeL2();
      this.l2Index = index;
      this.l2.fill(0);
      this.l2Host = await this.alloc.allocClusters(1);
    }
    return (cluster % this.l2Entries) * this.entryBytes;
  }

  private async writeL2(): Promise<void> {
    if (this.l2Index < 0) return;
    await this.out.writeAt(Buffer.from(this.l2), this.l2Host);
    setEntry(this.l1, this.l2Index * 8, this.l2Host, COPIED);
    this.l2Index = -1;
  }

  /** Allocate a standard cluster for `cluster` and, when given, write its data. Returns its host offset. */
  private async placeData(cluster: number, data: Uint8Array | undefined): Promise<number> {
    const e = await this.useL2(cluster);
    const host = await this.alloc.allocClusters(1);
    setEntry(this.l2, e, host, COPIED);
    if (this.opts.extendedL2) this.l2.writeUInt32BE(0xffffffff, e + 12); // all 32 subclusters allocated
    if (data) await this.out.append(data, host);
    return host;
  }

  /** A zero cluster (v3): reads as zero whatever the backing file holds, and takes no host space. */
  private async placeZero(cluster: number): Promise<void> {
    const e = await this.useL2(cluster);
    if (this.opts.extendedL2) this.l2.writeUInt32BE(0xffffffff, e + 8); // all 32 subclusters zero
    else this.l2.writeUInt32BE(1, e + 4);
  }

  private async placeCompressed(cluster: number, data: Uint8Array): Promise<void> {
    const e = await this.useL2(cluster);
    const host = await this.alloc.allocBytes(data.length);
    // Descriptor: host byte offset in bits [0, x), extra 512-byte sectors in bits [x, 62).
    const x = BigInt(62 - (this.opts.clusterBits - 8));
    const extraSectors = Math.floor((host + data.length - 1) / 512) - Math.floor(host / 512);
    const desc = BigInt(host) | (BigInt(extraSectors) << x) | (BigInt(COMPRESSED) << 32n);
    this.l2.writeBigUInt64BE(desc, e);
    await this.out.append(data, host);
  }

  /** preallocation=metadata: give every cluster below `limit` a host cluster (left as a hole: zeros). */
  private async preallocate(limit: number): Promise<void> {
    for (; this.preallocNext < limit; this.preallocNext++) await this.placeData(this.preallocNext, undefined);
    this.preallocNext = Math.max(this.preallocNext, limit + 1);
  }

  async finish(): Promise<void> {
    const p = this.chain.then(() => this.doFinish());
    this.chain = p.catch(() => undefined);
    return p;
  }

  private async doFinish(): Promise<void> {
    if (this.done) return;
    try {
      await this.flushPartial();
      while (this.queue.length) await this.placeNext();
      if (this.opts.preallocation === 'metadata') await this.preallocate(this.clusters);
      await this.writeL2();
      await this.out.writeAt(this.l1, this.l1Offset);
      const ref = await this.alloc.finish();
      await this.out.drain();
      await this.file.truncate(ref.fileEnd);
      await this.out.writeAt(this.header(ref.tableOffset, ref.tableClusters), 0);
      await this.out.settle();
      await this.file.sync();
    } finally {
      this.done = true;
      await this.shutdown();
    }
  }

  private header(refTable: number, refClusters: number): Buffer {
    const o = this.opts;
    const h = Buffer.alloc(headerBytes(this.opts, this.backing));
    h.writeUInt32BE(QCOW2_MAGIC, 0);
    h.writeUInt32BE(o.version, 4);
    h.writeUInt32BE(o.clusterBits, 20);
    h.writeBigUInt64BE(BigInt(this.virtualSize), 24);
    // 32: crypt_method 0
    h.writeUInt32BE(this.l1.length / 8, 36);
    h.writeBigUInt64BE(BigInt(this.l1Offset), 40);
    h.writeBigUInt64BE(BigInt(refTable), 48);
    h.writeUInt32BE(refClusters, 56);
    // 60: no snapshots
    let headerLength = 72; // version 2
    if (o.version === 3) {
      let incompat = 0n;
      if (o.extendedL2) incompat |= INCOMPAT_EXTL2;
      if (o.compressionType === 'zstd') incompat |= INCOMPAT_COMPRESSION;
      h.writeBigUInt64BE(incompat, 72);
      h.writeBigUInt64BE(o.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n, 80);
      h.writeUInt32BE(o.refcountOrder, 96);
      headerLength = 112; // through compression_type, padded to 8
      h.writeUInt32BE(headerLength, 100);
      h[104] = o.compressionType === 'zstd' ? 1 : 0;
    }
    // Header extensions (the backing file's format), the end marker, then the backing file's name.
    let at = headerLength;
    const b = this.backing;
    if (b?.format) {
      h.writeUInt32BE(EXT_BACKING_FORMAT, at);
      h.writeUInt32BE(b.format.length, at + 4);
      b.format.copy(h, at + 8);
      at += 8 + Math.ceil(b.format.length / 8) * 8;
    }
    at += 8; // end marker: 8 zero bytes
    if (b) {
      h.writeBigUInt64BE(BigInt(at), 8);
      h.writeUInt32BE(b.file.length, 16);
      b.file.copy(h, at);
      at += b.file.length;
    }
    return h.subarray(0, at);
  }

  async abort(): Promise<void> {
    this.done = true;
    this.queue.length = 0;
    await this.shutdown();
  }

  private closed = false;

  private async shutdown(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Compressions still running hold only their own buffers; let them settle before closing.
    await Promise.allSettled(this.queue.map((c) => c.result));
    await this.out.close();
    await this.file.close();
  }
}

/** Bytes of the header cluster in use: header, extensions, end marker and backing file name. */
function headerBytes(o: Qcow2CreateOptions, b: { file: Buffer; format?: Buffer } | undefined): number {
  const fixed = o.version === 3 ? 112 : 72;
  const ext = b?.format ? 8 + Math.ceil(b.format.length / 8) * 8 : 0;
  return fixed + ext + 8 + (b?.file.length ?? 0);
}

/** Check an overlay's backing file fields against qcow2's limits and the header cluster's size. */
function backingFields(backing: { file: string; format?: string }, o: Qcow2CreateOptions): { file: Buffer; format?: Buffer } {
  if (o.preallocation !== 'off') throw new SparsifyError('qcow2: preallocation=metadata cannot be used for an image with a backing file');
  const file = Buffer.from(backing.file, 'utf8');
  if (file.length === 0 || file.length > 1023 || file.includes(0)) throw new SparsifyError(`qcow2: invalid backing file name '${backing.file}' (1 to 1023 bytes, no NUL)`);
  const format = backing.format !== undefined ? Buffer.from(backing.format, 'utf8') : undefined;
  if (format && (format.length === 0 || format.length > 16 || format.includes(0))) throw new SparsifyError(`qcow2: invalid backing format '${backing.format}'`);
  const fields = { file, ...(format ? { format } : {}) };
  const need = headerBytes(o, fields);
  if (need > 2 ** o.clusterBits) {
    throw new SparsifyError(`qcow2: the header and backing file name need ${need} bytes, more than one ${2 ** o.clusterBits}-byte cluster; use a larger cluster_size`);
  }
  return fields;
}

/** Write a standard L1/L2 entry: host offset (bits 9-55) plus flags in the high word. */
function setEntry(buf: Buffer, at: number, host: number, highFlags: number): void {
  buf.writeUInt32BE((Math.floor(host / 2 ** 32) | highFlags) >>> 0, at);
  buf.writeUInt32BE(host % 2 ** 32, at + 4);
}
