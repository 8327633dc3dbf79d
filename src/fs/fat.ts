/**
 * FAT12/16/32 free space (Microsoft's FAT specification, "FAT: General Overview of On-Disk Format").
 *
 * Layout: reserved sectors (boot sector, FSInfo, backup boot) | numFATs copies of the FAT |
 * the FAT12/16 fixed root directory | the data region of clusters numbered from 2.
 * A FAT entry of 0 marks a free cluster; only data-region clusters are ever reported free, and
 * only when every live FAT copy agrees. FSInfo's free count is a hint and is ignored.
 * The type follows the Linux kernel's rule: a zero 16-bit FAT size means FAT32, otherwise the
 * cluster count decides between FAT12 (< 4085) and FAT16.
 */
import { CorruptError, hex } from '../io/errors.js';
import { Extents, ExtentsBuilder } from '../io/extents.js';
import type { Volume } from '../layout/volume.js';
import type { FsAnalysis, FsReader } from './types.js';

export interface FatGeometry {
  fatType: 12 | 16 | 32;
  bytesPerSector: number;
  clusterSize: number;
  reservedSectors: number;
  numFats: number;
  fatSectors: number;
  totalSectors: number;
  /** Byte offset of cluster 2. */
  dataStart: number;
  /** Clusters the FAT can describe and the data region holds: numbered 2..clusterCount+1. */
  clusterCount: number;
  /** Indexes of the FAT copies in use (all of them unless FAT32 mirroring is disabled). */
  liveFats: number[];
  media: number;
  volumeId: number;
  label: string;
  /** Boot-sector state byte bit 0 (set by Linux while mounted). */
  stateDirty: boolean;
}

const FAT12_MAX_CLUSTERS = 4084;

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** Parse and sanity-check the boot sector. Throws CorruptError naming the bad field. */
export function parseFatBootSector(bs: Buffer, volumeSize: number): FatGeometry {
  const bad = (what: string): never => {
    throw new CorruptError(`fat: boot sector at 0x0 has ${what}`);
  };
  if (bs.length < 512) bad('fewer than 512 bytes');
  if (bs[510] !== 0x55 || bs[511] !== 0xaa) bad('no 0x55AA signature');
  const bytesPerSector = bs.readUInt16LE(11);
  if (![512, 1024, 2048, 4096].includes(bytesPerSector)) bad(`an invalid sector size ${bytesPerSector}`);
  const spc = bs[13]!;
  if (!isPowerOfTwo(spc)) bad(`an invalid sectors-per-cluster ${spc}`);
  const reservedSectors = bs.readUInt16LE(14);
  if (reservedSectors === 0) bad('no reserved sectors');
  const numFats = bs[16]!;
  if (numFats === 0 || numFats > 16) bad(`an invalid FAT count ${numFats}`);
  const rootEntries = bs.readUInt16LE(17);
  const totalSectors = bs.readUInt16LE(19) || bs.readUInt32LE(32);
  if (totalSectors === 0) bad('a total sector count of 0');
  const media = bs[21]!;
  const fat16Sectors = bs.readUInt16LE(22);
  const isFat32 = fat16Sectors === 0;
  const fatSectors = isFat32 ? bs.readUInt32LE(36) : fat16Sectors;
  if (fatSectors === 0) bad('a FAT size of 0');
  if (isFat32 && rootEntries !== 0) bad(`FAT32 with ${rootEntries} fixed root entries`);
  const rootDirSectors = Math.ceil((rootEntries * 32) / bytesPerSector);
  const firstDataSector = reservedSectors + numFats * fatSectors + rootDirSectors;
  if (firstDataSector >= totalSectors) bad(`metadata (${firstDataSector} sectors) filling the whole volume (${totalSectors} sectors)`);
  const size = totalSectors * bytesPerSector;
  if (size > volumeSize) {
    throw new CorruptError(`fat: boot sector at 0x0 says the filesystem is ${size} bytes but the volume holds only ${volumeSize}`);
  }
  let clusterCount = Math.floor((totalSectors - firstDataSector) / spc);
  if (clusterCount < 1) bad('no data clusters');
  const fatType: 12 | 16 | 32 = isFat32 ? 32 : clusterCount <= FAT12_MAX_CLUSTERS ? 12 : 16;
  // Clusters the FAT has no entry for cannot be allocated (the kernel caps the count the same way).
  const fatEntries = Math.floor((fatSectors * bytesPerSector * 8) / fatType);
  clusterCount = Math.min(clusterCount, fatEntries - 2, fatType === 32 ? 0x0ffffff5 : fatType === 16 ? 0xfff5 : 0xff5);
  if (clusterCount < 1) bad('a FAT too small for any cluster');

  let liveFats = [...Array(numFats).keys()];
  let ext = 36; // extended BPB offset for FAT12/16
  if (isFat32) {
    const extFlags = bs.readUInt16LE(40);
    if (extFlags & 0x80) {
      const active = extFlags & 0x0f;
      if (active >= numFats) bad(`active FAT ${active} of only ${numFats}`);
      liveFats = [active];
    }
    if (bs.readUInt16LE(42) !== 0) bad(`unknown FAT32 version ${hex(bs.readUInt16LE(42))}`);
    ext = 64;
  }
  const hasExtBpb = bs[ext + 2] === 0x29;
  const label = hasExtBpb ? bs.toString('latin1', ext + 7, ext + 18).replace(/ +$/, '') : '';
  return {
    fatType,
    bytesPerSector,
    clusterSize: spc * bytesPerSector,
    reservedSectors,
    numFats,
    fatSectors,
    totalSectors,
    dataStart: firstDataSector * bytesPerSector,
    clusterCount,
    liveFats,
    media,
    volumeId: hasExtBpb ? bs.readUInt32LE(ext + 3) : 0,
    label: label === 'NO NAME' ? '' : label,
    stateDirty: hasExtBpb && (bs[ext + 1]! & 1) === 1,
  };
}

/** Read entry `i` of a FAT held in `fat` (which starts at entry `base`, for FAT32 chunks). */
function entry(fat: Buffer, type: 12 | 16 | 32, i: number, base = 0): number {
  if (type === 32) return fat.readUInt32LE((i - base) * 4) & 0x0fffffff;
  if (type === 16) return fat.readUInt16LE(i * 2);
  const off = (i * 3) >> 1;
  const v = fat.readUInt16LE(off);
  return i & 1 ? v >> 4 : v & 0xfff;
}

const CHUNK_ENTRIES = 1 << 18; // FAT32 entries per read (1 MiB)

interface FatScan {
  free: Extents;
  entry1: number;
  entry0: number;
  copiesDisagree: boolean;
}

/** Scan the FAT copies; a cluster is free only when every live copy says 0. */
async function scanFats(volume: Volume, g: FatGeometry): Promise<FatScan> {
  const fatStart = (i: number): number => (g.reservedSectors + i * g.fatSectors) * g.bytesPerSector;
  const entries = g.clusterCount + 2;
  const b = new ExtentsBuilder();
  let copiesDisagree = false;
  let entry0 = 0;
  let entry1 = 0;
  // FAT12/16 tables are at most ~128 KiB: one read. FAT32 ones are streamed.
  const step = g.fatType === 32 ? CHUNK_ENTRIES : entries;
  for (let first = 0; first < entries; first += step) {
    const last = Math.min(entries, first + step);
    const byteStart = g.fatType === 32 ? first * 4 : 0;
    const byteLen = g.fatType === 32 ? (last - first) * 4 : Math.ceil((entries * g.fatType) / 8) + 1;
    const copies: Buffer[] = [];
    for (const i of g.liveFats) {
      const len = Math.min(byteLen, g.fatSectors * g.bytesPerSector - byteStart);
      const buf = Buffer.alloc(byteLen + 1);
      await volume.read(buf.subarray(0, len), fatStart(i) + byteStart);
      copies.push(buf);
    }
    const [main, ...others] = copies as [Buffer, ...Buffer[]];
    if (first === 0) {
      entry0 = entry(main, g.fatType, 0);
      entry1 = entry(main, g.fatType, 1);
    }
    for (let c = Math.max(first, 2); c < last; c++) {
      let isFree = entry(main, g.fatType, c, first) === 0;
      for (const o of others) {
        const v = entry(o, g.fatType, c, first);
        if ((v === 0) !== isFree) copiesDisagree = true;
        if (v !== 0) isFree = false;
      }
      if (isFree) {
        const s = g.dataStart + (c - 2) * g.clusterSize;
        b.add(s, s + g.clusterSize);
      }
    }
  }
  return { free: b.build(), entry0, entry1, copiesDisagree };
}

function looksLikeFat(bs: Buffer): boolean {
  if (bs[0] !== 0xeb && bs[0] !== 0xe9) return false;
  const oem = bs.toString('latin1', 3, 11);
  if (oem === 'NTFS    ' || oem === 'EXFAT   ') return false;
  return true;
}

export const fatReader: FsReader = {
  name: 'fat',

  async probe(volume: Volume): Promise<boolean> {
    try {
      if (volume.size < 512) return false;
      const bs = await volume.readAt(0, 512);
      if (!looksLikeFat(bs)) return false;
      parseFatBootSector(bs, volume.size);
      return true;
    } catch {
      return false;
    }
  },

  async analyze(volume: Volume): Promise<FsAnalysis> {
    if (volume.size < 512) throw new CorruptError(`fat: volume of ${volume.size} bytes is too small for a boot sector`);
    const g = parseFatBootSector(await volume.readAt(0, 512), volume.size);
    const size = g.totalSectors * g.bytesPerSector;
    const scan = await scanFats(volume, g);
    const warnings: string[] = [];
    const result: FsAnalysis = {
      type: 'vfat',
      label: g.label || undefined,
      uuid: g.volumeId ? `${(g.volumeId >>> 16).toString(16).padStart(4, '0')}-${(g.volumeId & 0xffff).toString(16).padStart(4, '0')}`.toUpperCase() : undefined,
      blockSize: g.clusterSize,
      size,
      usedBytes: size,
      freeBytes: 0,
      free: new Extents(),
      trusted: false,
      warnings,
      details: { fatType: `FAT${g.fatType}`, clusters: g.clusterCount, fats: g.numFats },
    };
    // Entry 0 repeats the media byte: a mismatch means we are not looking at a FAT.
    if ((scan.entry0 & 0xff) !== g.media) {
      throw new CorruptError(`fat: FAT at ${hex(g.reservedSectors * g.bytesPerSector)} starts with ${hex(scan.entry0)}, not the media byte ${hex(g.media)}`);
    }
    // Entry 1's top bits are the clean-shutdown and no-I/O-error flags (FAT16/32).
    const cleanBit = g.fatType === 32 ? 0x08000000 : g.fatType === 16 ? 0x8000 : 0;
    const hardErrBit = g.fatType === 32 ? 0x04000000 : g.fatType === 16 ? 0x4000 : 0;
    if (cleanBit && !(scan.entry1 & cleanBit)) warnings.push('FAT volume was not unmounted cleanly (dirty flag in FAT entry 1); kept whole');
    if (hardErrBit && !(scan.entry1 & hardErrBit)) warnings.push('FAT volume recorded an I/O error (FAT entry 1); kept whole');
    if (g.stateDirty) warnings.push('FAT volume is marked dirty in its boot sector; kept whole');
    if (warnings.length) return result;

    if (scan.copiesDisagree) {
      warnings.push('FAT copies disagree about free clusters; only clusters free in every copy are reclaimed (run fsck.fat)');
    }
    result.free = scan.free;
    result.freeBytes = scan.free.total();
    result.usedBytes = size - result.freeBytes;
    result.trusted = true;
    return result;
  },
};
