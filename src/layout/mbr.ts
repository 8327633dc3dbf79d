/** DOS/MBR partition tables, including the chain of extended boot records for logical partitions. */
import { hex } from '../io/errors.js';
import { Extents } from '../io/extents.js';
import type { ContainerAnalysis, ContainerReader } from './types.js';
import type { Volume } from './volume.js';
import { entriesToChildren, type PartitionEntry } from './partition.js';

const SECTOR = 512;
const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);
const MAX_LOGICAL = 256;

const TYPE_NAMES: Record<number, string> = {
  0x01: 'FAT12', 0x04: 'FAT16 <32M', 0x06: 'FAT16', 0x07: 'HPFS/NTFS/exFAT', 0x0b: 'W95 FAT32', 0x0c: 'W95 FAT32 (LBA)',
  0x0e: 'W95 FAT16 (LBA)', 0x27: 'Hidden NTFS WinRE', 0x82: 'Linux swap', 0x83: 'Linux', 0x8e: 'Linux LVM',
  0xa5: 'FreeBSD', 0xee: 'GPT protective', 0xef: 'EFI System', 0xfd: 'Linux raid autodetect',
};

interface RawEntry {
  status: number;
  type: number;
  lba: number;
  count: number;
}

function parseEntries(sector: Buffer): RawEntry[] {
  const out: RawEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const o = 0x1be + i * 16;
    out.push({ status: sector[o]!, type: sector[o + 4]!, lba: sector.readUInt32LE(o + 8), count: sector.readUInt32LE(o + 12) });
  }
  return out;
}

/** A FAT, NTFS or exFAT boot sector also ends in 55 AA; it is not a partition table. */
function looksLikeBootSector(s: Buffer): boolean {
  const oem = s.subarray(3, 11).toString('latin1');
  if (oem === 'NTFS    ' || oem === 'EXFAT   ') return true;
  const jump = s[0] === 0xeb || s[0] === 0xe9;
  const bps = s.readUInt16LE(11);
  const spc = s[13]!;
  const fatString = s.subarray(0x36, 0x39).toString('latin1') === 'FAT' || s.subarray(0x52, 0x57).toString('latin1') === 'FAT32';
  return jump && bps >= 512 && bps <= 4096 && (bps & (bps - 1)) === 0 && spc > 0 && (spc & (spc - 1)) === 0 && fatString;
}

/** Is this sector a plausible MBR: signature, sane status bytes, at least one used entry, not a boot sector? */
export function isMbr(sector: Buffer): boolean {
  if (sector.length < SECTOR || sector[510] !== 0x55 || sector[511] !== 0xaa) return false;
  if (looksLikeBootSector(sector)) return false;
  const entries = parseEntries(sector);
  if (entries.some((e) => e.status !== 0 && e.status !== 0x80)) return false;
  return entries.some((e) => e.type !== 0 && e.count !== 0 && e.lba !== 0);
}

async function readLogicals(disk: Volume, extStart: number, extLength: number, firstNumber: number, warnings: string[]): Promise<PartitionEntry[]> {
  const out: PartitionEntry[] = [];
  const seen = new Set<number>();
  let ebr = extStart;
  let n = firstNumber;
  while (true) {
    if (seen.has(ebr)) {
      warnings.push(`MBR: the chain of extended boot records loops back to ${hex(ebr)}; logical partitions after it are ignored`);
      break;
    }
    if (out.length >= MAX_LOGICAL) {
      warnings.push(`MBR: more than ${MAX_LOGICAL} logical partitions; the rest are ignored`);
      break;
    }
    seen.add(ebr);
    if (ebr + SECTOR > disk.size || ebr < extStart || ebr >= extStart + extLength) {
      warnings.push(`MBR: extended boot record at ${hex(ebr)} lies outside the extended partition; logical partitions from it on are ignored`);
      break;
    }
    const sector = await disk.readAt(ebr, SECTOR);
    if (sector[510] !== 0x55 || sector[511] !== 0xaa) {
      warnings.push(`MBR: extended boot record at ${hex(ebr)} has no 55 AA signature; logical partitions from it on are ignored`);
      break;
    }
    const [logical, next] = parseEntries(sector);
    if (logical && logical.type !== 0 && logical.count !== 0) {
      out.push({
        number: n++,
        start: ebr + logical.lba * SECTOR,
        length: logical.count * SECTOR,
        type: logical.type.toString(16).padStart(2, '0'),
        typeName: TYPE_NAMES[logical.type],
        entryOffset: ebr + 0x1be,
      });
    }
    if (!next || next.type === 0 || !EXTENDED_TYPES.has(next.type) || next.count === 0) break;
    ebr = extStart + next.lba * SECTOR;
  }
  return out;
}

async function analyzeMbr(disk: Volume): Promise<ContainerAnalysis> {
  const warnings: string[] = [];
  const sector = await disk.readAt(0, SECTOR);
  const entries: PartitionEntry[] = [];
  let extended: RawEntry | undefined;
  parseEntries(sector).forEach((e, i) => {
    if (e.type === 0 || e.count === 0) return;
    if (EXTENDED_TYPES.has(e.type)) {
      if (extended) warnings.push(`MBR: more than one extended partition; only the first is followed`);
      else extended = e;
      // The extended partition itself is a container: its EBRs are kept; it gets no device of its own here.
      return;
    }
    entries.push({
      number: i + 1,
      start: e.lba * SECTOR,
      length: e.count * SECTOR,
      type: e.type.toString(16).padStart(2, '0'),
      typeName: TYPE_NAMES[e.type],
      entryOffset: 0x1be + i * 16,
    });
  });
  if (extended) {
    entries.push(...(await readLogicals(disk, extended.lba * SECTOR, extended.count * SECTOR, 5, warnings)));
  }
  return {
    type: 'mbr',
    children: entriesToChildren(disk, 'MBR', entries, warnings),
    free: new Extents(),
    warnings,
    details: { partitions: entries.length },
  };
}

export const mbrReader: ContainerReader = {
  name: 'mbr',
  scope: 'disk',
  async probe(disk: Volume): Promise<boolean> {
    if (disk.size < SECTOR * 2) return false;
    return isMbr(await disk.readAt(0, SECTOR));
  },
  analyze: analyzeMbr,
};
