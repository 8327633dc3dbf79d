/**
 * VHDX reader. BAT entries (u64): bits 0-2 state, bits 20-63 file offset in MiB; after every
 * `chunkRatio` payload entries comes one sector-bitmap entry. Payload states: 0 not present,
 * 1 undefined, 2 zero, 3 unmapped (these read as zero, as in qemu), 6 fully present.
 */
import type { BlockFile } from '../../io/file.js';
import { CorruptError, hex } from '../../io/errors.js';
import { BlockMappedImage, type BlockState } from '../common/blockimage.js';
import type { DiskImage, OpenContext } from '../types.js';
import { MiB } from './structures.js';
import { loadVhdx } from './layout.js';
import type { LogOverlay } from './log-replay.js';

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
    /** A pending log replayed in memory (in-place mode): blocks it touches are read through it. */
    private readonly overlay?: LogOverlay,
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
        const size = this.overlay?.size ?? this.file.size;
        if (host < MiB || host + len > size) {
          throw new CorruptError(`vhdx: ${this.path}: BAT entry ${e} (block ${index}) points to ${hex(host)}, outside the file (size ${hex(size)})`);
        }
        const overlay = this.overlay;
        if (overlay && (host + len > this.file.size || overlay.touches(host, host + len))) {
          return { kind: 'fetch', load: async () => { const b = Buffer.alloc(this.blockSize); await overlay.read(this.file, b, host); return b; } };
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
  // Opened for writing (in place): a pending log is replayed in memory here, on disk by the updater.
  const l = await loadVhdx(file, { replayInMemory: file.writable });
  const { entries, bat: raw } = l;
  const states = new Uint8Array(entries);
  const mib = new Uint32Array(entries);
  for (let i = 0; i < entries; i++) {
    const lo = raw.readUInt32LE(i * 8);
    const hi = raw.readUInt32LE(i * 8 + 4);
    states[i] = lo & 7;
    // Offset in MiB is bits 20..63: 12 bits from the low word, 32 from the high word.
    const m = (lo >>> 20) + hi * 4096;
    if (m > 0xffffffff) throw new CorruptError(`vhdx: ${file.path}: BAT entry ${i} at ${hex(l.regions.bat.offset + i * 8)} has an out-of-range offset`);
    mib[i] = m;
  }
  const img = new VhdxImage(file, l.md.virtualSize, l.md.blockSize, l.ratio, states, mib, {
    subformat: l.md.leaveBlocksAllocated ? 'fixed' : 'dynamic',
    block_size: l.md.blockSize,
    logical_sector_size: l.md.logicalSectorSize,
  }, l.pending?.overlay);
  img.allocated = await file.allocatedBytes();
  return img;
}
