/**
 * VMDK writers. monolithicSparse: header, descriptor, redundant and primary grain directories with all
 * grain tables preallocated (as qemu-img lays them out), then grains appended in write order; each
 * grain table is written once writes have moved past it. streamOptimized (VMware's stream layout):
 * header with the GD "at end", descriptor, then compressed grains each behind a {lba, size} marker,
 * a grain-table marker + table after each table's grains, then the GD, a footer and end-of-stream.
 */
import { basename } from 'node:path';
import { deflate } from 'node:zlib';
import { promisify } from 'node:util';
import { SparsifyError, hex } from '../../io/errors.js';
import { DirectBlockWriter, OutputFile, isZero, roundUp } from '../common/blockwriter.js';
import type { ImageWriter } from '../types.js';
import { buildDescriptor } from './descriptor.js';
import {
  COMPRESS_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NL_DETECT, FLAG_RGD, MARKER_FOOTER, MARKER_GD, MARKER_GT,
  SECTOR, buildSparseHeader, type SparseHeader,
} from './header.js';

const deflateAsync = promisify(deflate);
export const GRAIN_SECTORS = 128;
const GRAIN = GRAIN_SECTORS * SECTOR;
const GTES = 512;
const GT_BYTES = GTES * 4;
const DESC_SECTORS = 20;

function geometry(size: number): { sectors: number; grains: number; gts: number } {
  const sectors = Math.ceil(size / SECTOR);
  const grains = Math.ceil(sectors / GRAIN_SECTORS);
  return { sectors, grains, gts: Math.ceil(grains / GTES) };
}

function descriptorSector(createType: string, extentFile: string, sectors: number): Buffer {
  const b = Buffer.alloc(DESC_SECTORS * SECTOR);
  b.write(buildDescriptor({ createType, extentFile, sectors }), 0, 'latin1');
  return b;
}

function tableBytes(t: Uint32Array): Buffer {
  const b = Buffer.alloc(t.length * 4);
  for (let i = 0; i < t.length; i++) b.writeUInt32LE(t[i]!, i * 4);
  return b;
}

export class SparseVmdkWriter implements ImageWriter {
  readonly format = 'vmdk';
  private readonly writer: DirectBlockWriter;
  private readonly gd: Uint32Array;
  private readonly rgd: Uint32Array;
  private readonly dirty = new Map<number, Uint32Array>();
  private next: number;
  private readonly gdAt: number;
  private readonly rgdAt: number;

  constructor(
    private readonly out: OutputFile,
    private readonly header: Buffer,
    size: number,
  ) {
    const g = geometry(size);
    const gdSectors = Math.ceil((g.gts * 4) / SECTOR);
    const gtSectors = GT_BYTES / SECTOR;
    this.rgdAt = 1 + DESC_SECTORS;
    this.gdAt = this.rgdAt + gdSectors + g.gts * gtSectors;
    this.rgd = new Uint32Array(g.gts);
    this.gd = new Uint32Array(g.gts);
    for (let i = 0; i < g.gts; i++) {
      this.rgd[i] = this.rgdAt + gdSectors + i * gtSectors;
      this.gd[i] = this.gdAt + gdSectors + i * gtSectors;
    }
    const overhead = roundUp(this.gdAt + gdSectors + g.gts * gtSectors, GRAIN_SECTORS);
    this.next = overhead;
    header.writeBigUInt64LE(BigInt(this.rgdAt), 48);
    header.writeBigUInt64LE(BigInt(this.gdAt), 56);
    header.writeBigUInt64LE(BigInt(overhead), 64);
    this.writer = new DirectBlockWriter(
      'vmdk', out, size, GRAIN,
      (i) => {
        const t = this.dirty.get(Math.floor(i / GTES));
        const e = t ? t[i % GTES]! : 0;
        return e ? e * SECTOR : undefined;
      },
      async (i) => {
        const gt = Math.floor(i / GTES);
        await this.flushBefore(gt);
        let t = this.dirty.get(gt);
        if (!t) this.dirty.set(gt, (t = new Uint32Array(GTES)));
        t[i % GTES] = this.next;
        const host = this.next * SECTOR;
        this.next += GRAIN_SECTORS;
        await out.truncate(this.next * SECTOR);
        return host;
      },
    );
  }

  /** Writes are ascending, so grain tables before `gt` are final. */
  private async flushBefore(gt: number): Promise<void> {
    for (const [k, t] of this.dirty) {
      if (k >= gt) continue;
      const b = tableBytes(t);
      await this.out.write(b, this.gd[k]! * SECTOR);
      await this.out.write(b, this.rgd[k]! * SECTOR);
      this.dirty.delete(k);
    }
  }

  write(buf: Buffer, offset: number): Promise<void> {
    return this.writer.write(buf, offset);
  }

  async finish(): Promise<void> {
    await this.flushBefore(Infinity);
    await this.out.write(tableBytes(this.rgd), this.rgdAt * SECTOR);
    await this.out.write(tableBytes(this.gd), this.gdAt * SECTOR);
    await this.out.write(this.header, 0);
    await this.out.truncate(this.next * SECTOR);
    await this.out.sync();
    await this.out.close();
  }

  async abort(): Promise<void> {
    await this.out.close();
  }
}

export async function createSparseWriter(path: string, size: number, finalPath?: string): Promise<ImageWriter> {
  const g = geometry(size);
  const hdr: SparseHeader = {
    version: 1,
    flags: FLAG_NL_DETECT | FLAG_RGD,
    capacity: g.sectors,
    grainSize: GRAIN_SECTORS,
    descriptorOffset: 1,
    descriptorSize: DESC_SECTORS,
    numGTEsPerGT: GTES,
    rgdOffset: 0,
    gdOffset: 0,
    overHead: 0,
    compressAlgorithm: 0,
  };
  const out = await OutputFile.create(path);
  await out.write(descriptorSector('monolithicSparse', basename(finalPath ?? path), g.sectors), SECTOR);
  return new SparseVmdkWriter(out, buildSparseHeader(hdr), g.sectors * SECTOR);
}

function marker(val: number, size: number, type: number): Buffer {
  const b = Buffer.alloc(SECTOR);
  b.writeBigUInt64LE(BigInt(val), 0);
  b.writeUInt32LE(size, 8);
  b.writeUInt32LE(type, 12);
  return b;
}

export class StreamVmdkWriter implements ImageWriter {
  readonly format = 'vmdk';
  private readonly gd: Uint32Array;
  private gt: Uint32Array | undefined;
  private gtIndex = -1;
  private next: number; // next free sector
  private grainIndex = -1;
  private grain: Buffer | undefined;
  private last = 0;
  /** Compressions in flight, written in order. */
  private readonly queue: { index: number; data: Promise<Buffer> }[] = [];

  constructor(
    private readonly out: OutputFile,
    private readonly hdr: SparseHeader,
    private readonly size: number,
    private readonly inFlight: number,
  ) {
    this.gd = new Uint32Array(geometry(size).gts);
    this.next = hdr.overHead;
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    if (offset < this.last) throw new SparsifyError(`vmdk writer: write at ${hex(offset)} is not ascending`);
    if (offset + buf.length > this.size) throw new SparsifyError(`vmdk writer: write at ${hex(offset)} past end of disk`);
    this.last = offset + buf.length;
    let pos = offset;
    const end = offset + buf.length;
    while (pos < end) {
      const index = Math.floor(pos / GRAIN);
      const stop = Math.min(end, (index + 1) * GRAIN);
      const piece = buf.subarray(pos - offset, stop - offset);
      if (index !== this.grainIndex) {
        await this.closeGrain();
        this.grainIndex = index;
      }
      if (this.grain || !isZero(piece)) {
        if (!this.grain) this.grain = Buffer.alloc(GRAIN);
        piece.copy(this.grain, pos - index * GRAIN);
      }
      pos = stop;
    }
  }

  private async closeGrain(): Promise<void> {
    if (this.grain) {
      const data = this.grain;
      this.queue.push({ index: this.grainIndex, data: deflateAsync(data) });
      this.grain = undefined;
      if (this.queue.length >= this.inFlight) await this.drain(this.inFlight - 1);
    }
  }

  private async drain(keep: number): Promise<void> {
    while (this.queue.length > keep) {
      const { index, data } = this.queue.shift()!;
      const z = await data;
      const gt = Math.floor(index / GTES);
      if (gt !== this.gtIndex) {
        await this.writeGT();
        this.gtIndex = gt;
        this.gt = new Uint32Array(GTES);
      }
      const rec = Buffer.alloc(roundUp(12 + z.length, SECTOR));
      rec.writeBigUInt64LE(BigInt(index * GRAIN_SECTORS), 0);
      rec.writeUInt32LE(z.length, 8);
      z.copy(rec, 12);
      this.gt![index % GTES] = this.next;
      await this.out.write(rec, this.next * SECTOR);
      this.next += rec.length / SECTOR;
    }
  }

  private async writeGT(): Promise<void> {
    if (!this.gt) return;
    await this.out.write(marker(GT_BYTES / SECTOR, 0, MARKER_GT), this.next * SECTOR);
    this.gd[this.gtIndex] = this.next + 1;
    await this.out.write(tableBytes(this.gt), (this.next + 1) * SECTOR);
    this.next += 1 + GT_BYTES / SECTOR;
    this.gt = undefined;
  }

  async finish(): Promise<void> {
    await this.closeGrain();
    await this.drain(0);
    await this.writeGT();
    const gdBytes = tableBytes(this.gd);
    const gdSectors = Math.ceil(gdBytes.length / SECTOR);
    await this.out.write(marker(gdSectors, 0, MARKER_GD), this.next * SECTOR);
    const gdAt = this.next + 1;
    await this.out.write(Buffer.concat([gdBytes, Buffer.alloc(gdSectors * SECTOR - gdBytes.length)]), gdAt * SECTOR);
    this.next = gdAt + gdSectors;
    const footer = buildSparseHeader({ ...this.hdr, gdOffset: gdAt });
    const tail = Buffer.concat([marker(1, 0, MARKER_FOOTER), footer, marker(0, 0, 0)]);
    await this.out.write(tail, this.next * SECTOR);
    await this.out.truncate((this.next + 3) * SECTOR);
    await this.out.sync();
    await this.out.close();
  }

  async abort(): Promise<void> {
    await Promise.allSettled(this.queue.map((q) => q.data));
    await this.out.close();
  }
}

export async function createStreamWriter(path: string, size: number, threads: number, finalPath?: string): Promise<ImageWriter> {
  const g = geometry(size);
  const hdr: SparseHeader = {
    version: 3,
    flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
    capacity: g.sectors,
    grainSize: GRAIN_SECTORS,
    descriptorOffset: 1,
    descriptorSize: DESC_SECTORS,
    numGTEsPerGT: GTES,
    rgdOffset: 0,
    gdOffset: -1,
    overHead: GRAIN_SECTORS,
    compressAlgorithm: COMPRESS_DEFLATE,
  };
  const out = await OutputFile.create(path);
  await out.write(buildSparseHeader(hdr), 0);
  await out.write(descriptorSector('streamOptimized', basename(finalPath ?? path), g.sectors), SECTOR);
  return new StreamVmdkWriter(out, hdr, g.sectors * SECTOR, Math.max(2, threads * 4));
}
