/**
 * exFAT free space (Microsoft's "exFAT file system specification").
 *
 * The main boot region is sectors 0..11: boot sector, 8 extended boot sectors, OEM parameters,
 * a reserved sector, and sector 11 repeating a 32-bit checksum of sectors 0..10 (VolumeFlags and
 * PercentInUse excluded). The allocation bitmap, found through its 0x81 entry in the root
 * directory, has one bit per heap cluster (bit 0 = cluster 2); a clear bit is a free cluster.
 * The bitmap's own clusters are described by the FAT; the Linux driver reads them as one
 * contiguous run, so we insist that the chain is contiguous and both readings agree.
 */
import { CorruptError, hex } from '../io/errors.js';
import { Extents, ExtentsBuilder } from '../io/extents.js';
import type { Volume } from '../layout/volume.js';
import type { FsAnalysis, FsReader } from './types.js';

const OEM = 'EXFAT   ';
const FLAG_ACTIVE_FAT = 1;
const FLAG_DIRTY = 2;
const FLAG_MEDIA_FAILURE = 4;
const FAT_EOC = 0xffffffff;
const ENTRY_BITMAP = 0x81;
const ENTRY_LABEL = 0x83;
/** Directory entries scanned in the root looking for the bitmap and label (the spec puts them first). */
const MAX_ROOT_CLUSTERS = 64;

export interface ExfatGeometry {
  sectorSize: number;
  clusterSize: number;
  volumeLength: number;
  fatOffset: number;
  fatLength: number;
  heapOffset: number;
  clusterCount: number;
  rootCluster: number;
  serial: number;
  revision: number;
  flags: number;
  numFats: number;
}

/** Boot region checksum over sectors 0..10, skipping VolumeFlags (106, 107) and PercentInUse (112). */
export function exfatBootChecksum(region: Buffer, sectorSize: number): number {
  let sum = 0;
  const n = 11 * sectorSize;
  for (let i = 0; i < n; i++) {
    if (i === 106 || i === 107 || i === 112) continue;
    sum = (((sum & 1) << 31) | (sum >>> 1)) + region[i]!;
    sum >>>= 0;
  }
  return sum;
}

export function parseExfatBootSector(bs: Buffer, volumeSize: number): ExfatGeometry {
  const bad = (what: string): never => {
    throw new CorruptError(`exfat: boot sector at 0x0 has ${what}`);
  };
  if (bs.toString('latin1', 3, 11) !== OEM) bad('no EXFAT signature');
  if (bs[510] !== 0x55 || bs[511] !== 0xaa) bad('no 0x55AA signature');
  for (let i = 11; i < 64; i++) if (bs[i] !== 0) bad(`a non-zero byte at ${i} (must be zero)`);
  const sectorShift = bs[108]!;
  const clusterShift = bs[109]!;
  if (sectorShift < 9 || sectorShift > 12) bad(`an invalid sector size shift ${sectorShift}`);
  if (clusterShift > 25 - sectorShift) bad(`an invalid cluster size shift ${clusterShift}`);
  const sectorSize = 1 << sectorShift;
  const volumeLength = Number(bs.readBigUInt64LE(72));
  const fatOffset = bs.readUInt32LE(80);
  const fatLength = bs.readUInt32LE(84);
  const heapOffset = bs.readUInt32LE(88);
  const clusterCount = bs.readUInt32LE(92);
  const rootCluster = bs.readUInt32LE(96);
  const numFats = bs[110]!;
  if (numFats !== 1 && numFats !== 2) bad(`an invalid FAT count ${numFats}`);
  if (fatOffset < 24 || fatLength === 0 || fatLength * sectorSize < (clusterCount + 2) * 4) bad(`an invalid FAT at sector ${fatOffset} (${fatLength} sectors)`);
  if (heapOffset < fatOffset + numFats * fatLength) bad(`a cluster heap at sector ${heapOffset} overlapping the FAT`);
  if (clusterCount === 0 || clusterCount > 0xfffffff5) bad(`an invalid cluster count ${clusterCount}`);
  const clusterSize = sectorSize << clusterShift;
  const heapEnd = heapOffset * sectorSize + clusterCount * clusterSize;
  if (volumeLength * sectorSize < heapEnd) bad(`a cluster heap ending at ${hex(heapEnd)} beyond the volume length`);
  if (volumeLength * sectorSize > volumeSize) {
    throw new CorruptError(`exfat: boot sector at 0x0 says the filesystem is ${volumeLength * sectorSize} bytes but the volume holds only ${volumeSize}`);
  }
  if (rootCluster < 2 || rootCluster > clusterCount + 1) bad(`an invalid root directory cluster ${rootCluster}`);
  return {
    sectorSize,
    clusterSize,
    volumeLength,
    fatOffset,
    fatLength,
    heapOffset,
    clusterCount,
    rootCluster,
    serial: bs.readUInt32LE(100),
    revision: bs.readUInt16LE(104),
    flags: bs.readUInt16LE(106),
    numFats,
  };
}

class ExfatVolume {
  constructor(
    readonly volume: Volume,
    readonly g: ExfatGeometry,
  ) {}

  clusterOffset(c: number): number {
    return this.g.heapOffset * this.g.sectorSize + (c - 2) * this.g.clusterSize;
  }

  /** The active FAT's entry for cluster `c`. */
  async fatEntry(c: number): Promise<number> {
    const fat = this.g.numFats === 2 && this.g.flags & FLAG_ACTIVE_FAT ? 1 : 0;
    const off = (this.g.fatOffset + fat * this.g.fatLength) * this.g.sectorSize + c * 4;
    return (await this.volume.readAt(off, 4)).readUInt32LE(0);
  }

  /** Clusters of the chain starting at `first`, stopping after `max` clusters; loops and bad links throw. */
  async chain(first: number, max: number, what: string): Promise<number[]> {
    const out: number[] = [];
    const seen = new Set<number>();
    let c = first;
    while (out.length < max) {
      if (c < 2 || c > this.g.clusterCount + 1) throw new CorruptError(`exfat: ${what} chain reaches invalid cluster ${hex(c)}`);
      if (seen.has(c)) throw new CorruptError(`exfat: ${what} FAT chain loops back to cluster ${hex(c)}`);
      seen.add(c);
      out.push(c);
      const next = await this.fatEntry(c);
      if (next === FAT_EOC) return out;
      c = next;
    }
    return out;
  }
}

interface RootInfo {
  bitmap?: { cluster: number; length: number };
  label?: string;
}

async function readRoot(ev: ExfatVolume): Promise<RootInfo> {
  const clusters = await ev.chain(ev.g.rootCluster, MAX_ROOT_CLUSTERS, 'root directory');
  const info: RootInfo = {};
  const wantedBitmap = ev.g.numFats === 2 ? ev.g.flags & FLAG_ACTIVE_FAT : 0;
  for (const c of clusters) {
    const buf = await ev.volume.readAt(ev.clusterOffset(c), ev.g.clusterSize);
    for (let off = 0; off < buf.length; off += 32) {
      const type = buf[off]!;
      if (type === 0) return info; // end of directory
      if (type === ENTRY_BITMAP) {
        // With two FATs (TexFAT) there are two bitmaps; bit 0 of BitmapFlags says which FAT's.
        if ((buf[off + 1]! & 1) !== wantedBitmap) continue;
        if (info.bitmap) throw new CorruptError(`exfat: root directory at ${hex(ev.clusterOffset(c) + off)} has a second allocation bitmap entry`);
        info.bitmap = { cluster: buf.readUInt32LE(off + 20), length: Number(buf.readBigUInt64LE(off + 24)) };
      } else if (type === ENTRY_LABEL) {
        const n = Math.min(buf[off + 1]!, 11);
        info.label = buf.toString('utf16le', off + 2, off + 2 + n * 2);
      }
    }
  }
  return info;
}

export const exfatReader: FsReader = {
  name: 'exfat',

  async probe(volume: Volume): Promise<boolean> {
    try {
      if (volume.size < 512) return false;
      const bs = await volume.readAt(0, 512);
      parseExfatBootSector(bs, volume.size);
      return true;
    } catch {
      return false;
    }
  },

  async analyze(volume: Volume): Promise<FsAnalysis> {
    if (volume.size < 512) throw new CorruptError(`exfat: volume of ${volume.size} bytes is too small for a boot sector`);
    const g = parseExfatBootSector(await volume.readAt(0, 512), volume.size);
    const region = await volume.readAt(0, 12 * g.sectorSize);
    const sum = exfatBootChecksum(region, g.sectorSize);
    for (let off = 11 * g.sectorSize; off < 12 * g.sectorSize; off += 4) {
      if (region.readUInt32LE(off) !== sum) {
        throw new CorruptError(`exfat: boot region checksum at ${hex(off)} is ${hex(region.readUInt32LE(off))}, computed ${hex(sum)}`);
      }
    }
    const size = g.volumeLength * g.sectorSize;
    const warnings: string[] = [];
    const result: FsAnalysis = {
      type: 'exfat',
      uuid: `${(g.serial >>> 16).toString(16).padStart(4, '0')}-${(g.serial & 0xffff).toString(16).padStart(4, '0')}`.toUpperCase(),
      blockSize: g.clusterSize,
      size,
      usedBytes: size,
      freeBytes: 0,
      free: new Extents(),
      trusted: false,
      warnings,
      details: { revision: `${g.revision >> 8}.${(g.revision & 0xff).toString().padStart(2, '0')}`, clusters: g.clusterCount, fats: g.numFats },
    };
    if (g.revision >> 8 !== 1) {
      warnings.push(`unknown exFAT revision ${hex(g.revision)}; kept whole`);
      return result;
    }
    if (g.flags & FLAG_DIRTY) warnings.push('exFAT volume is dirty (VolumeDirty flag set: not unmounted cleanly); kept whole');
    if (g.flags & FLAG_MEDIA_FAILURE) warnings.push('exFAT volume recorded a media failure; kept whole');
    if (warnings.length) return result;

    const ev = new ExfatVolume(volume, g);
    const root = await readRoot(ev);
    if (root.label) result.label = root.label;
    if (!root.bitmap) throw new CorruptError(`exfat: no allocation bitmap entry in the root directory (cluster ${hex(g.rootCluster)})`);
    const bitmapBytes = Math.ceil(g.clusterCount / 8);
    if (root.bitmap.length < bitmapBytes) {
      throw new CorruptError(`exfat: allocation bitmap is ${root.bitmap.length} bytes, too small for ${g.clusterCount} clusters`);
    }
    const bitmapClusters = Math.ceil(bitmapBytes / g.clusterSize);
    const chain = await ev.chain(root.bitmap.cluster, bitmapClusters, 'allocation bitmap');
    if (chain.length < bitmapClusters || chain.some((c, i) => c !== root.bitmap!.cluster + i)) {
      throw new CorruptError(`exfat: allocation bitmap at cluster ${hex(root.bitmap.cluster)} is not one contiguous run of ${bitmapClusters} clusters`);
    }

    // Stream the bitmap: bit i (LSB first) is cluster i + 2.
    const b = new ExtentsBuilder();
    const start = ev.clusterOffset(root.bitmap.cluster);
    const CHUNK = 1 << 20;
    for (let pos = 0; pos < bitmapBytes; pos += CHUNK) {
      const buf = await volume.readAt(start + pos, Math.min(CHUNK, bitmapBytes - pos));
      for (let i = 0; i < buf.length; i++) {
        const byte = buf[i]!;
        if (byte === 0xff) continue;
        for (let bit = 0; bit < 8; bit++) {
          const idx = (pos + i) * 8 + bit;
          if (idx >= g.clusterCount) break;
          if (!(byte & (1 << bit))) {
            const s = ev.clusterOffset(idx + 2);
            b.add(s, s + g.clusterSize);
          }
        }
      }
    }
    const free = b.build();
    // The bitmap, upcase table and root directory must be marked in use; if not, the map is wrong.
    for (const c of [root.bitmap.cluster, g.rootCluster]) {
      if (free.contains(ev.clusterOffset(c))) throw new CorruptError(`exfat: allocation bitmap marks metadata cluster ${hex(c)} free`);
    }
    result.free = free;
    result.freeBytes = free.total();
    result.usedBytes = size - result.freeBytes;
    result.trusted = true;
    return result;
  },
};
