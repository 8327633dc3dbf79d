/**
 * NTFS on-disk records: the boot sector, multi-sector fixups, MFT records, attributes and data
 * runs. Layouts follow the Linux ntfs3/ntfs-3g documentation of the format (layout.h).
 */
import { CorruptError, hex } from '../io/errors.js';
import type { Volume } from '../layout/volume.js';

export interface NtfsBoot {
  bytesPerSector: number;
  clusterSize: number;
  /** Sectors the filesystem spans, excluding the backup boot sector that follows them. */
  totalSectors: number;
  clusterCount: number;
  mftLcn: number;
  mftMirrLcn: number;
  mftRecordSize: number;
  indexRecordSize: number;
  serial: bigint;
}

/** A signed size byte: positive = clusters, negative = 2^-n bytes. */
function recordSize(v: number, clusterSize: number): number {
  const s = v > 127 ? v - 256 : v;
  if (s > 0) return s * clusterSize;
  if (s < -31 || s === 0) return -1;
  return 2 ** -s;
}

export function parseNtfsBoot(bs: Buffer, volumeSize: number): NtfsBoot {
  const bad = (what: string): never => {
    throw new CorruptError(`ntfs: boot sector at 0x0 has ${what}`);
  };
  if (bs.toString('latin1', 3, 11) !== 'NTFS    ') bad('no NTFS signature');
  if (bs[510] !== 0x55 || bs[511] !== 0xaa) bad('no 0x55AA signature');
  const bytesPerSector = bs.readUInt16LE(11);
  if (![256, 512, 1024, 2048, 4096].includes(bytesPerSector)) bad(`an invalid sector size ${bytesPerSector}`);
  const spcRaw = bs[13]!;
  // Values above 0x80 encode 2^(256-v) sectors (clusters of 128 KiB and more).
  const spc = spcRaw <= 0x80 ? spcRaw : 2 ** (256 - spcRaw);
  if (spc === 0 || (spc & (spc - 1)) !== 0 || spc * bytesPerSector > 2 << 20) bad(`an invalid sectors-per-cluster byte ${hex(spcRaw)}`);
  const clusterSize = spc * bytesPerSector;
  const totalSectors = Number(bs.readBigUInt64LE(40));
  const clusterCount = Math.floor(totalSectors / spc);
  if (clusterCount < 16) bad(`too few clusters (${clusterCount})`);
  if (clusterCount * clusterSize > volumeSize) {
    throw new CorruptError(`ntfs: boot sector at 0x0 says the filesystem is ${totalSectors * bytesPerSector} bytes but the volume holds only ${volumeSize}`);
  }
  const mftLcn = Number(bs.readBigUInt64LE(48));
  const mftMirrLcn = Number(bs.readBigUInt64LE(56));
  if (mftLcn >= clusterCount) bad(`an MFT cluster ${mftLcn} past the last cluster`);
  if (mftMirrLcn >= clusterCount) bad(`an MFT mirror cluster ${mftMirrLcn} past the last cluster`);
  const mftRecordSize = recordSize(bs[64]!, clusterSize);
  const indexRecordSize = recordSize(bs[68]!, clusterSize);
  if (mftRecordSize < 256 || mftRecordSize > 65536 || (mftRecordSize & (mftRecordSize - 1))) bad(`an invalid MFT record size byte ${hex(bs[64]!)}`);
  if (indexRecordSize < 256 || indexRecordSize > 65536 || (indexRecordSize & (indexRecordSize - 1))) bad(`an invalid index record size byte ${hex(bs[68]!)}`);
  return {
    bytesPerSector,
    clusterSize,
    totalSectors,
    clusterCount,
    mftLcn,
    mftMirrLcn,
    mftRecordSize,
    indexRecordSize,
    serial: bs.readBigUInt64LE(72),
  };
}

/**
 * Apply the update sequence array in place: the last two bytes of every 512-byte stride must
 * equal the update sequence number, and are replaced by the saved originals.
 */
export function applyFixups(rec: Buffer, magic: string, where: string): void {
  if (rec.toString('latin1', 0, 4) !== magic) throw new CorruptError(`ntfs: ${where} has bad magic (expected ${magic})`);
  const usaOffset = rec.readUInt16LE(4);
  const usaCount = rec.readUInt16LE(6);
  if (usaCount !== rec.length / 512 + 1 || usaOffset < 8 || usaOffset + usaCount * 2 > rec.length || usaOffset & 1) {
    throw new CorruptError(`ntfs: ${where} has an invalid update sequence array (offset ${usaOffset}, count ${usaCount})`);
  }
  const usn = rec.readUInt16LE(usaOffset);
  for (let i = 1; i < usaCount; i++) {
    const pos = i * 512 - 2;
    if (rec.readUInt16LE(pos) !== usn) throw new CorruptError(`ntfs: ${where} fails its update sequence check in sector ${i - 1} (torn write)`);
    rec.writeUInt16LE(rec.readUInt16LE(usaOffset + i * 2), pos);
  }
}

export interface Run {
  vcn: number;
  /** Cluster on disk, or -1 for a sparse run. */
  lcn: number;
  length: number;
}

export interface Attribute {
  type: number;
  name: string;
  nonResident: boolean;
  flags: number;
  /** Resident value. */
  value?: Buffer;
  /** Non-resident fields. */
  startVcn?: number;
  lastVcn?: number;
  dataSize?: number;
  runs?: Run[];
}

export const ATTR = {
  attributeList: 0x20,
  fileName: 0x30,
  volumeInformation: 0x70,
  data: 0x80,
  indexRoot: 0x90,
  indexAllocation: 0xa0,
  bitmap: 0xb0,
} as const;

/** Decode a mapping-pairs array; every run must lie inside the volume's clusters. */
export function decodeRuns(buf: Buffer, start: number, end: number, startVcn: number, clusterCount: number, where: string): Run[] {
  const runs: Run[] = [];
  let pos = start;
  let vcn = startVcn;
  let lcn = 0;
  while (pos < end) {
    const header = buf[pos]!;
    if (header === 0) return runs;
    const lenSize = header & 0x0f;
    const offSize = header >> 4;
    if (lenSize === 0 || lenSize > 8 || offSize > 8 || pos + 1 + lenSize + offSize > end) {
      throw new CorruptError(`ntfs: ${where} has a malformed data run at byte ${pos - start}`);
    }
    const length = Number(readUnsigned(buf, pos + 1, lenSize));
    if (length <= 0 || length > clusterCount) throw new CorruptError(`ntfs: ${where} has a data run of ${length} clusters`);
    if (offSize === 0) {
      runs.push({ vcn, lcn: -1, length });
    } else {
      lcn += Number(readSigned(buf, pos + 1 + lenSize, offSize));
      if (lcn < 0 || lcn + length > clusterCount) {
        throw new CorruptError(`ntfs: ${where} has a data run at cluster ${lcn} (+${length}) past the end of the volume (${clusterCount} clusters)`);
      }
      runs.push({ vcn, lcn, length });
    }
    vcn += length;
    pos += 1 + lenSize + offSize;
  }
  throw new CorruptError(`ntfs: ${where} has data runs without a terminator`);
}

function readUnsigned(buf: Buffer, pos: number, n: number): bigint {
  let v = 0n;
  for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(buf[pos + i]!);
  return v;
}

function readSigned(buf: Buffer, pos: number, n: number): bigint {
  const v = readUnsigned(buf, pos, n);
  const sign = 1n << BigInt(n * 8 - 1);
  return v & sign ? v - (sign << 1n) : v;
}

export interface MftRecord {
  number: number;
  flags: number;
  baseRecord: number;
  attributes: Attribute[];
}

export const RECORD_IN_USE = 1;

/** Parse a fixed-up MFT record's attributes, bounds-checking every length and offset. */
export function parseMftRecord(rec: Buffer, number: number, clusterCount: number): MftRecord {
  const where = `MFT record ${number}`;
  const bad = (what: string): never => {
    throw new CorruptError(`ntfs: ${where} ${what}`);
  };
  const attrsOffset = rec.readUInt16LE(20);
  const flags = rec.readUInt16LE(22);
  const bytesInUse = rec.readUInt32LE(24);
  if (bytesInUse > rec.length || attrsOffset < 24 || attrsOffset >= bytesInUse) bad(`has invalid sizes (attributes at ${attrsOffset}, ${bytesInUse} bytes in use)`);
  const attributes: Attribute[] = [];
  let pos = attrsOffset;
  for (let n = 0; ; n++) {
    if (pos + 4 > bytesInUse || n > 1024) bad(`has no attribute end marker`);
    const type = rec.readUInt32LE(pos);
    if (type === 0xffffffff) break;
    if (pos + 16 > bytesInUse) bad(`has an attribute header past its end at ${pos}`);
    const len = rec.readUInt32LE(pos + 4);
    if (len < 24 || len & 7 || pos + len > bytesInUse) bad(`has an attribute of invalid length ${len} at ${pos}`);
    const nonResident = rec[pos + 8] !== 0;
    const nameLen = rec[pos + 9]!;
    const nameOff = rec.readUInt16LE(pos + 10);
    if (nameLen && nameOff + nameLen * 2 > len) bad(`has an attribute name past its end at ${pos}`);
    const a: Attribute = {
      type,
      name: nameLen ? rec.toString('utf16le', pos + nameOff, pos + nameOff + nameLen * 2) : '',
      nonResident,
      flags: rec.readUInt16LE(pos + 12),
    };
    if (!nonResident) {
      const vlen = rec.readUInt32LE(pos + 16);
      const voff = rec.readUInt16LE(pos + 20);
      if (voff + vlen > len) bad(`has a resident value past its attribute at ${pos}`);
      a.value = rec.subarray(pos + voff, pos + voff + vlen);
    } else {
      if (len < 64) bad(`has a non-resident attribute too short (${len}) at ${pos}`);
      a.startVcn = Number(rec.readBigUInt64LE(pos + 16));
      a.lastVcn = Number(rec.readBigInt64LE(pos + 24));
      const runsOff = rec.readUInt16LE(pos + 32);
      a.dataSize = Number(rec.readBigUInt64LE(pos + 48));
      if (runsOff < 64 || runsOff > len) bad(`has data runs outside its attribute at ${pos}`);
      a.runs = decodeRuns(rec, pos + runsOff, pos + len, a.startVcn, clusterCount, `${where} attribute ${hex(type)}`);
    }
    attributes.push(a);
    pos += len;
  }
  return { number, flags, baseRecord: Number(rec.readBigUInt64LE(32) & 0xffffffffffffn), attributes };
}

/**
 * Read `length` bytes at byte `offset` of a non-resident stream described by `runs`.
 * Sparse or unmapped parts are an error: none of the streams we read may have them.
 */
export async function readRuns(volume: Volume, runs: Run[], clusterSize: number, offset: number, length: number, where: string): Promise<Buffer> {
  const out = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const vcn = Math.floor((offset + done) / clusterSize);
    const run = runs.find((r) => vcn >= r.vcn && vcn < r.vcn + r.length);
    if (!run || run.lcn < 0) throw new CorruptError(`ntfs: ${where} has no cluster mapped at VCN ${vcn}`);
    const within = offset + done - run.vcn * clusterSize;
    const n = Math.min(length - done, run.length * clusterSize - within);
    await volume.read(out.subarray(done, done + n), run.lcn * clusterSize + within);
    done += n;
  }
  return out;
}
