/**
 * VHDX reader. BAT entries (u64): bits 0-2 state, bits 20-63 file offset in MiB; after every
 * `chunkRatio` payload entries comes one sector-bitmap entry. Payload states: 0 not present,
 * 1 undefined, 2 zero, 3 unmapped (these read as zero, as in qemu), 6 fully present.
 */
import type { BlockFile } from '../../io/file.js';
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';
import { BlockMappedImage, type BlockState } from '../common/blockimage.js';
import type { DiskImage, OpenContext } from '../types.js';
import { MiB, SIGNATURE, batEntries, chunkRatio, readHeaders, readMetadata, readRegions } from './structures.js';

export const PAYLOAD_NOT_PRESENT = 0;
export const PAYLOAD_UNDEFINED = 1;
export const PAYLOAD_ZERO = 2;
export const PAYLOAD_UNMAPPED = 3;
export const PAYLOAD_FULLY_PRESENT = 6;
export const PAYLOAD_PARTIALLY_PRESENT = 7;

class VhdxImage extends BlockMappedImage {
  constructor(
    file: BlockFile,
    virtualSize: number,
    blockSize: number,
    private readonly ratio: number,
    private readonly states: Uint8Array,
    private readonly mib: Uint32Array,
    details: Record<string, number | string>,
  ) {
    super({ format: 'vhdx', file, virtualSize, blockSize, details });
  }

  protected lookup(index: number): BlockState {
    const e = index + Math.floor(index / this.ratio);
    const state = this.states[e]!;
    switch (state) {
      case PAYLOAD_NOT_PRESENT:
        return { kind: 'unallocated' };
      case PAYLOAD_UNDEFINED:
      case PAYLOAD_ZERO:
      case PAYLOAD_UNMAPPED:
        return { kind: 'zero' };
      case PAYLOAD_FULLY_PRESENT: {
        const host = this.mib[e]! * MiB;
        const len = Math.min(this.blockSize, this.virtualSize - index * this.blockSize);
        if (host < MiB || host + len > this.file.size) {
          throw new CorruptError(`vhdx: ${this.path}: BAT entry ${e} (block ${index}) points to ${hex(host)}, outside the file (size ${hex(this.file.size)})`);
        }
        return { kind: 'data', host };
      }
      case PAYLOAD_PARTIALLY_PRESENT:
        throw new CorruptError(`vhdx: ${this.path}: BAT entry ${e}: partially present block in a disk without a parent`);
      default:
        throw new CorruptError(`vhdx: ${this.path}: BAT entry ${e} has invalid state ${state}`);
    }
  }
}

export async function openVhdx(file: BlockFile, _ctx: OpenContext): Promise<DiskImage> {
  const sig = Buffer.alloc(8);
  await file.readExact(sig, 0, 'vhdx file identifier');
  if (sig.toString('latin1') !== SIGNATURE) throw new CorruptError(`vhdx: ${file.path}: no 'vhdxfile' identifier at 0x0`);
  await readHeaders(file);
  const regions = await readRegions(file);
  const md = await readMetadata(file, regions.metadata);
  if (md.hasParent) {
    throw new SparsifyError(`vhdx: ${file.path}: differencing VHDX images (with a parent) are not supported yet`);
  }
  const ratio = chunkRatio(md);
  const blocks = Math.ceil(md.virtualSize / md.blockSize);
  const entries = blocks === 0 ? 0 : batEntries(blocks, ratio, false);
  if (entries * 8 > regions.bat.length) {
    throw new CorruptError(`vhdx: ${file.path}: BAT region at ${hex(regions.bat.offset)} (${regions.bat.length} bytes) is too small for ${entries} entries`);
  }
  const raw = Buffer.alloc(entries * 8);
  await file.readExact(raw, regions.bat.offset, 'vhdx BAT');
  const states = new Uint8Array(entries);
  const mib = new Uint32Array(entries);
  for (let i = 0; i < entries; i++) {
    const lo = raw.readUInt32LE(i * 8);
    const hi = raw.readUInt32LE(i * 8 + 4);
    states[i] = lo & 7;
    // Offset in MiB is bits 20..63: 12 bits from the low word, 32 from the high word.
    const m = (lo >>> 20) + hi * 4096;
    if (m > 0xffffffff) throw new CorruptError(`vhdx: ${file.path}: BAT entry ${i} at ${hex(regions.bat.offset + i * 8)} has an out-of-range offset`);
    mib[i] = m;
  }
  const img = new VhdxImage(file, md.virtualSize, md.blockSize, ratio, states, mib, {
    block_size: md.blockSize,
    logical_sector_size: md.logicalSectorSize,
  });
  img.allocated = await file.allocatedBytes();
  return img;
}
