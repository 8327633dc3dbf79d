/**
 * GUID partition tables. Both headers and their entry arrays are CRC-checked; when the primary is
 * damaged the backup at the end of the disk is used, with a warning.
 */
import { CorruptError, hex } from '../io/errors.js';
import { crc32 } from '../io/checksums.js';
import { Extents } from '../io/extents.js';
import type { ContainerAnalysis, ContainerReader } from './types.js';
import type { Volume } from './volume.js';
import { entriesToChildren, type PartitionEntry } from './partition.js';

const SIGNATURE = 'EFI PART';
const SECTOR_SIZES = [512, 4096];
const MAX_ENTRY_BYTES = 4 << 20;

const TYPE_NAMES: Record<string, string> = {
  'c12a7328-f81f-11d2-ba4b-00a0c93ec93b': 'EFI System',
  '21686148-6449-6e6f-744e-656564454649': 'BIOS boot',
  'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7': 'Microsoft basic data',
  'e3c9e316-0b5c-4db8-817d-f92df00215ae': 'Microsoft reserved',
  'de94bba4-06d1-4d40-a16a-bfd50179d6ac': 'Windows recovery',
  '0fc63daf-8483-4772-8e79-3d69d8477de4': 'Linux filesystem',
  '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f': 'Linux swap',
  'e6d6d379-f507-44c2-a23c-238f2a3df928': 'Linux LVM',
  'a19d880f-05fc-4d3b-a006-743f0f84911e': 'Linux RAID',
  'ca7d7ccb-63ed-4c53-861c-1742536059cc': 'Linux LUKS',
  '4f68bce3-e8cd-4db1-96e7-fbcaf984b709': 'Linux root (x86-64)',
  'bc13c2ff-59e6-4262-a352-b275fd6f7172': 'Linux extended boot',
  '933ac7e1-2eb4-4f13-b844-0e14e2aef915': 'Linux home',
};

/** Mixed-endian GUID as text. */
export function guidString(b: Buffer): string {
  const h = (s: number, e: number, le: boolean) => {
    const part = Buffer.from(b.subarray(s, e));
    if (le) part.reverse();
    return part.toString('hex');
  };
  return `${h(0, 4, true)}-${h(4, 6, true)}-${h(6, 8, true)}-${h(8, 10, false)}-${h(10, 16, false)}`;
}

interface Header {
  sectorSize: number;
  offset: number;
  alternateLba: number;
  firstUsable: number;
  lastUsable: number;
  entriesLba: number;
  numEntries: number;
  entrySize: number;
  entriesCrc: number;
  diskGuid: string;
}

/** Parse and CRC-check a header at byte `offset`; returns an error string when it is not valid. */
function parseHeader(buf: Buffer, offset: number, sectorSize: number, diskSize: number): Header | string {
  if (buf.subarray(0, 8).toString('latin1') !== SIGNATURE) return `no GPT signature at ${hex(offset)}`;
  const headerSize = buf.readUInt32LE(12);
  if (headerSize < 92 || headerSize > sectorSize) return `GPT header at ${hex(offset)} has invalid size ${headerSize}`;
  const copy = Buffer.from(buf.subarray(0, headerSize));
  const stored = copy.readUInt32LE(16);
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) !== stored) return `GPT header at ${hex(offset)} fails its CRC`;
  const lba = (o: number) => Number(buf.readBigUInt64LE(o));
  const h: Header = {
    sectorSize,
    offset,
    alternateLba: lba(32),
    firstUsable: lba(40),
    lastUsable: lba(48),
    diskGuid: guidString(buf.subarray(56, 72)),
    entriesLba: lba(72),
    numEntries: buf.readUInt32LE(80),
    entrySize: buf.readUInt32LE(84),
    entriesCrc: buf.readUInt32LE(88),
  };
  const sectors = Math.floor(diskSize / sectorSize);
  if (h.entrySize < 128 || h.entrySize % 8 !== 0 || h.numEntries * h.entrySize > MAX_ENTRY_BYTES) {
    return `GPT header at ${hex(offset)} has an invalid entry array (${h.numEntries} entries of ${h.entrySize} bytes)`;
  }
  if (h.entriesLba >= sectors || (h.entriesLba * sectorSize + h.numEntries * h.entrySize) > diskSize) {
    return `GPT header at ${hex(offset)}: entry array at LBA ${h.entriesLba} lies beyond the end of the disk`;
  }
  if (h.firstUsable > h.lastUsable || h.lastUsable >= sectors) {
    return `GPT header at ${hex(offset)}: usable range LBA ${h.firstUsable}..${h.lastUsable} does not fit the disk (${sectors} sectors)`;
  }
  return h;
}

async function readEntries(disk: Volume, h: Header): Promise<Buffer | string> {
  const arr = await disk.readAt(h.entriesLba * h.sectorSize, h.numEntries * h.entrySize);
  if (crc32(arr) !== h.entriesCrc) return `GPT partition entry array at ${hex(h.entriesLba * h.sectorSize)} fails its CRC`;
  return arr;
}

/** Find a valid header + entry array: primary first, then the backup. */
async function locate(disk: Volume): Promise<{ h: Header; entries: Buffer; warnings: string[] } | { error: string }> {
  let firstError = '';
  for (const ss of SECTOR_SIZES) {
    if (disk.size < ss * 3) continue;
    const primaryBuf = await disk.readAt(ss, ss);
    if (primaryBuf.subarray(0, 8).toString('latin1') !== SIGNATURE && ss !== 512) continue;
    const problems: string[] = [];
    const primary = parseHeader(primaryBuf, ss, ss, disk.size);
    if (typeof primary !== 'string') {
      const entries = await readEntries(disk, primary);
      if (typeof entries !== 'string') return { h: primary, entries, warnings: [] };
      problems.push(entries);
    } else {
      problems.push(primary);
    }
    // The backup header is normally the last sector; a damaged primary may still name it.
    const candidates = new Set<number>([Math.floor(disk.size / ss) - 1]);
    if (typeof primary !== 'string' && primary.alternateLba > 1) candidates.add(primary.alternateLba);
    for (const lba of candidates) {
      if ((lba + 1) * ss > disk.size) continue;
      const backup = parseHeader(await disk.readAt(lba * ss, ss), lba * ss, ss, disk.size);
      if (typeof backup === 'string') continue;
      const entries = await readEntries(disk, backup);
      if (typeof entries === 'string') continue;
      if (primaryBuf.subarray(0, 8).toString('latin1') === SIGNATURE || ss === 512) {
        return { h: backup, entries, warnings: [`${problems[0]}; using the backup GPT header at ${hex(lba * ss)}`] };
      }
    }
    if (primaryBuf.subarray(0, 8).toString('latin1') === SIGNATURE) firstError ||= problems[0]!;
  }
  return { error: firstError || 'no GPT found' };
}

async function analyzeGpt(disk: Volume): Promise<ContainerAnalysis> {
  const found = await locate(disk);
  if ('error' in found) throw new CorruptError(`${found.error}, and no valid backup header was found`);
  const { h, entries, warnings } = found;
  const list: PartitionEntry[] = [];
  for (let i = 0; i < h.numEntries; i++) {
    const e = entries.subarray(i * h.entrySize, (i + 1) * h.entrySize);
    if (e.subarray(0, 16).every((b) => b === 0)) continue;
    const first = Number(e.readBigUInt64LE(32));
    const last = Number(e.readBigUInt64LE(40));
    const entryOffset = h.entriesLba * h.sectorSize + i * h.entrySize;
    if (last < first) {
      warnings.push(`GPT partition ${i + 1} (entry at ${hex(entryOffset)}) ends before it starts; it is ignored`);
      continue;
    }
    const type = guidString(e.subarray(0, 16));
    const rawName = e.subarray(56, 128).toString('utf16le');
    const nul = rawName.indexOf('\0');
    list.push({
      number: i + 1,
      start: first * h.sectorSize,
      length: (last - first + 1) * h.sectorSize,
      type,
      typeName: TYPE_NAMES[type],
      name: (nul < 0 ? rawName : rawName.slice(0, nul)) || undefined,
      entryOffset,
    });
  }
  return {
    type: 'gpt',
    children: entriesToChildren(disk, 'GPT', list, warnings),
    free: new Extents(),
    warnings,
    details: { sectorSize: h.sectorSize, diskGuid: h.diskGuid, partitions: list.length },
  };
}

export const gptReader: ContainerReader = {
  name: 'gpt',
  scope: 'disk',
  async probe(disk: Volume): Promise<boolean> {
    for (const ss of SECTOR_SIZES) {
      if (disk.size >= ss * 3 && (await disk.readAt(ss, 8)).toString('latin1') === SIGNATURE) return true;
    }
    // A disk whose primary header is wiped but whose protective MBR and backup header survive.
    if (disk.size >= 512 * 3) {
      const mbr = await disk.readAt(0, 512);
      const protective = mbr[510] === 0x55 && mbr[511] === 0xaa && mbr[0x1be + 4] === 0xee;
      if (protective) return true;
    }
    return false;
  },
  analyze: analyzeGpt,
};
