/**
 * VHDX writer: identifier, two headers, two region tables, an empty 1 MiB log at 1 MiB, metadata at
 * 2 MiB, the BAT at 3 MiB, then payload blocks allocated in write order (dynamic) or all in place
 * (fixed). The log GUID stays zero: nothing needs replaying.
 */
import { SparsifyError } from '../../io/errors.js';
import { DirectBlockWriter, OutputFile, randomGuid, roundUp } from '../common/blockwriter.js';
import type { ImageWriter } from '../types.js';
import {
  BAT_GUID, FILE_PARAMETERS, HEADER1_AT, HEADER2_AT, HEADER_SIZE, KiB, LOGICAL_SECTOR_SIZE, METADATA_GUID, MiB,
  PAGE83_DATA, PHYSICAL_SECTOR_SIZE, REGION1_AT, REGION2_AT, REGION_SIZE, SIGNATURE, VIRTUAL_DISK_SIZE, batEntries,
  chunkRatio, vhdxCrc,
} from './structures.js';
import { PAYLOAD_FULLY_PRESENT } from './image.js';

const LOG_AT = MiB;
const LOG_SIZE = MiB;
const METADATA_AT = 2 * MiB;
const METADATA_SIZE = MiB;
const BAT_AT = 3 * MiB;
const SECTOR = 512;

/** qemu-img's default block size for a given virtual size. */
export function defaultBlockSize(size: number): number {
  if (size > 32 * 2 ** 40) return 64 * MiB;
  if (size > 100 * 2 ** 30) return 32 * MiB;
  if (size > 2 ** 30) return 16 * MiB;
  return 8 * MiB;
}

function header(seq: number, fileWrite: Buffer, dataWrite: Buffer): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.write('head', 0, 'latin1');
  b.writeBigUInt64LE(BigInt(seq), 8);
  fileWrite.copy(b, 16);
  dataWrite.copy(b, 32);
  // Log GUID (48..63) zero: no log to replay.
  b.writeUInt16LE(0, 64); // log version
  b.writeUInt16LE(1, 66); // version
  b.writeUInt32LE(LOG_SIZE, 68);
  b.writeBigUInt64LE(BigInt(LOG_AT), 72);
  b.writeUInt32LE(vhdxCrc(b, 4), 4);
  return b;
}

function regionTable(batLength: number): Buffer {
  const b = Buffer.alloc(REGION_SIZE);
  b.write('regi', 0, 'latin1');
  b.writeUInt32LE(2, 8);
  BAT_GUID.copy(b, 16);
  b.writeBigUInt64LE(BigInt(BAT_AT), 32);
  b.writeUInt32LE(batLength, 40);
  b.writeUInt32LE(1, 44); // required
  METADATA_GUID.copy(b, 48);
  b.writeBigUInt64LE(BigInt(METADATA_AT), 64);
  b.writeUInt32LE(METADATA_SIZE, 72);
  b.writeUInt32LE(1, 76);
  b.writeUInt32LE(vhdxCrc(b, 4), 4);
  return b;
}

function metadata(blockSize: number, size: number): Buffer {
  const b = Buffer.alloc(METADATA_SIZE);
  b.write('metadata', 0, 'latin1');
  const items: [Buffer, Buffer, number][] = [];
  const fp = Buffer.alloc(8);
  fp.writeUInt32LE(blockSize, 0);
  items.push([FILE_PARAMETERS, fp, 4]);
  const vs = Buffer.alloc(8);
  vs.writeBigUInt64LE(BigInt(size));
  items.push([VIRTUAL_DISK_SIZE, vs, 6]);
  items.push([PAGE83_DATA, randomGuid(), 6]);
  const ls = Buffer.alloc(4);
  ls.writeUInt32LE(SECTOR);
  items.push([LOGICAL_SECTOR_SIZE, ls, 6]);
  const ps = Buffer.alloc(4);
  ps.writeUInt32LE(SECTOR);
  items.push([PHYSICAL_SECTOR_SIZE, ps, 6]);
  b.writeUInt16LE(items.length, 10);
  let off = 64 * KiB;
  items.forEach(([id, data, flags], i) => {
    const e = 32 + i * 32;
    id.copy(b, e);
    b.writeUInt32LE(off, e + 16);
    b.writeUInt32LE(data.length, e + 20);
    b.writeUInt32LE(flags, e + 24); // bit 1 virtual disk, bit 2 required
    data.copy(b, off);
    off += roundUp(data.length, 8);
  });
  return b;
}

class VhdxWriter implements ImageWriter {
  readonly format = 'vhdx';
  private readonly writer: DirectBlockWriter;
  private next: number;

  constructor(
    private readonly out: OutputFile,
    size: number,
    blockSize: number,
    ratio: number,
    private readonly bat: Float64Array,
    payloadAt: number,
    fixed: boolean,
  ) {
    this.next = payloadAt;
    const entry = (i: number): number => i + Math.floor(i / ratio);
    if (fixed) {
      for (let i = 0; i * blockSize < size; i++) bat[entry(i)] = payloadAt + i * blockSize;
      this.next = payloadAt + Math.ceil(size / blockSize) * blockSize;
    }
    this.writer = new DirectBlockWriter(
      'vhdx', out, size, blockSize,
      (i) => bat[entry(i)] || undefined,
      async (i) => {
        const host = this.next;
        bat[entry(i)] = host;
        this.next += blockSize;
        await out.truncate(this.next);
        return host;
      },
    );
  }

  write(buf: Buffer, offset: number): Promise<void> {
    return this.writer.write(buf, offset);
  }

  async finish(): Promise<void> {
    const raw = Buffer.alloc(this.bat.length * 8);
    for (let i = 0; i < this.bat.length; i++) {
      const host = this.bat[i]!;
      if (host) raw.writeBigUInt64LE((BigInt(host / MiB) << 20n) | BigInt(PAYLOAD_FULLY_PRESENT), i * 8);
    }
    await this.out.write(raw, BAT_AT);
    await this.out.truncate(this.next);
    await this.out.sync();
    await this.out.close();
  }

  async abort(): Promise<void> {
    await this.out.close();
  }
}

export async function createVhdxWriter(path: string, virtualSize: number, fixed: boolean, blockSizeOpt: number | undefined): Promise<ImageWriter> {
  const size = roundUp(virtualSize, SECTOR);
  if (size > 64 * 2 ** 40) throw new SparsifyError('vhdx: virtual size exceeds 64 TiB');
  const blockSize = blockSizeOpt ?? defaultBlockSize(size);
  if (blockSize < MiB || blockSize > 256 * MiB || (blockSize & (blockSize - 1)) !== 0) {
    throw new SparsifyError(`vhdx: block_size must be a power of two between 1M and 256M (got ${blockSize})`);
  }
  const ratio = chunkRatio({ blockSize, logicalSectorSize: SECTOR });
  const blocks = Math.ceil(size / blockSize);
  const entries = blocks === 0 ? 0 : batEntries(blocks, ratio, false);
  const batLength = roundUp(Math.max(entries * 8, 1), MiB);
  const out = await OutputFile.create(path);
  const ident = Buffer.alloc(64 * KiB);
  ident.write(SIGNATURE, 0, 'latin1');
  ident.write('sparsify', 8, 'utf16le');
  await out.write(ident, 0);
  const fw = randomGuid();
  const dw = randomGuid();
  await out.write(header(1, fw, dw), HEADER1_AT);
  await out.write(header(2, fw, dw), HEADER2_AT);
  await out.write(regionTable(batLength), REGION1_AT);
  await out.write(regionTable(batLength), REGION2_AT);
  await out.write(metadata(blockSize, size), METADATA_AT);
  const payloadAt = BAT_AT + batLength;
  await out.truncate(payloadAt);
  if (fixed) await out.truncate(payloadAt + blocks * blockSize);
  return new VhdxWriter(out, size, blockSize, ratio, new Float64Array(entries), payloadAt, fixed);
}
