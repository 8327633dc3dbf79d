/** ext block group descriptors: where they live, what they say, and whether their checksums hold. */
import { CorruptError, hex } from '../../io/errors.js';
import { crc16, crc32cRaw } from '../../io/checksums.js';
import type { Volume } from '../../layout/volume.js';
import { INCOMPAT, RO_COMPAT, COMPAT, type ExtSuperblock } from './superblock.js';

export const BG_INODE_UNINIT = 0x1;
export const BG_BLOCK_UNINIT = 0x2;

export interface GroupDesc {
  index: number;
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  freeClusters: number;
  flags: number;
  blockBitmapCsum: number;
  inodeBitmapCsum: number;
  /** Inodes at the end of the group's table never used (bg_itable_unused; meaningful only with group checksums). */
  itableUnused: number;
  /** Descriptor checksum problem, if any. */
  csumError?: string;
}

/** Does group `g` hold a superblock backup? (sparse_super: 0, 1 and powers of 3, 5, 7; sparse_super2: two chosen groups.) */
export function groupHasSuper(s: ExtSuperblock, g: number): boolean {
  if (g === 0) return true;
  if (s.compat & COMPAT.SPARSE_SUPER2) return g === s.backupBgs[0] || g === s.backupBgs[1];
  if (g <= 1 || !(s.roCompat & RO_COMPAT.SPARSE_SUPER)) return true;
  if (!(g & 1)) return false;
  for (const base of [3, 5, 7]) {
    let p = base;
    while (p < g) p *= base;
    if (p === g) return true;
  }
  return false;
}

export function groupFirstBlock(s: ExtSuperblock, g: number): number {
  return s.firstDataBlock + g * s.blocksPerGroup;
}

/**
 * The block holding group `g`'s superblock copy. The primary superblock always sits at byte 1024,
 * which is block 1 of a 1 KiB-block filesystem even when bigalloc makes the first data block 0.
 */
export function groupSuperBlock(s: ExtSuperblock, g: number): number {
  const b = groupFirstBlock(s, g);
  return b === 0 && s.blockSize === 1024 ? 1 : b;
}

export function descsPerBlock(s: ExtSuperblock): number {
  return s.blockSize / s.descSize;
}

/** Block numbers holding the primary copy of the descriptor table, one entry per descriptor block. */
export function descriptorBlocks(s: ExtSuperblock): number[] {
  const dpb = descsPerBlock(s);
  const nBlocks = Math.ceil(s.groupCount / dpb);
  const out: number[] = [];
  const metaBg = (s.incompat & INCOMPAT.META_BG) !== 0;
  for (let i = 0; i < nBlocks; i++) {
    if (!metaBg || i < s.firstMetaBg) {
      out.push(groupSuperBlock(s, 0) + 1 + i);
    } else {
      // In a meta_bg filesystem, descriptor block i lives in the first group of meta group i.
      const g = i * dpb;
      out.push(groupSuperBlock(s, g) + (groupHasSuper(s, g) ? 1 : 0));
    }
  }
  return out;
}

function descChecksumError(s: ExtSuperblock, g: number, d: Buffer): string | undefined {
  const stored = d.readUInt16LE(0x1e);
  const le = Buffer.alloc(4);
  le.writeUInt32LE(g);
  let computed: number;
  if (s.roCompat & RO_COMPAT.METADATA_CSUM) {
    let c = crc32cRaw(s.csumSeed, le);
    c = crc32cRaw(c, d.subarray(0, 0x1e));
    c = crc32cRaw(c, Buffer.alloc(2));
    if (s.descSize > 0x20) c = crc32cRaw(c, d.subarray(0x20, s.descSize));
    computed = c & 0xffff;
  } else if (s.roCompat & RO_COMPAT.GDT_CSUM) {
    let c = crc16(0xffff, s.uuid);
    c = crc16(c, le);
    c = crc16(c, d.subarray(0, 0x1e));
    if (s.descSize > 0x20) c = crc16(c, d.subarray(0x20, s.descSize));
    computed = c;
  } else {
    return undefined;
  }
  return stored === computed ? undefined : `group ${g} descriptor checksum mismatch (stored 0x${stored.toString(16)}, computed 0x${computed.toString(16)})`;
}

export async function readGroupDescs(vol: Volume, s: ExtSuperblock): Promise<GroupDesc[]> {
  const dpb = descsPerBlock(s);
  const blocks = descriptorBlocks(s);
  const groups: GroupDesc[] = [];
  const is64 = (s.incompat & INCOMPAT.BIT64) !== 0 && s.descSize >= 64;
  const hiOf = (d: Buffer, off: number) => (is64 ? d.readUInt32LE(off) * 0x100000000 : 0);
  // Read contiguous runs of descriptor blocks in one go (the common, non-meta_bg case is one run).
  let i = 0;
  while (i < blocks.length) {
    let j = i + 1;
    while (j < blocks.length && blocks[j] === blocks[j - 1]! + 1 && j - i < 1024) j++;
    const offset = blocks[i]! * s.blockSize;
    if (offset + (j - i) * s.blockSize > vol.size) throw new CorruptError(`ext: group descriptor block ${blocks[i]} at ${hex(offset)} lies beyond the volume`);
    const buf = await vol.readAt(offset, (j - i) * s.blockSize);
    for (let k = i * dpb; k < j * dpb && k < s.groupCount; k++) {
      const d = buf.subarray((k - i * dpb) * s.descSize, (k - i * dpb + 1) * s.descSize);
      groups.push({
        index: k,
        blockBitmap: d.readUInt32LE(0x0) + hiOf(d, 0x20),
        inodeBitmap: d.readUInt32LE(0x4) + hiOf(d, 0x24),
        inodeTable: d.readUInt32LE(0x8) + hiOf(d, 0x28),
        freeClusters: d.readUInt16LE(0xc) + (is64 ? d.readUInt16LE(0x2c) * 0x10000 : 0),
        flags: d.readUInt16LE(0x12),
        blockBitmapCsum: d.readUInt16LE(0x18) + (is64 && s.descSize >= 0x3c ? d.readUInt16LE(0x38) * 0x10000 : 0),
        inodeBitmapCsum: d.readUInt16LE(0x1a) + (is64 && s.descSize >= 0x3c ? d.readUInt16LE(0x3a) * 0x10000 : 0),
        itableUnused: d.readUInt16LE(0x1c) + (is64 ? d.readUInt16LE(0x32) * 0x10000 : 0),
        csumError: descChecksumError(s, k, d),
      });
    }
    i = j;
  }
  return groups;
}
