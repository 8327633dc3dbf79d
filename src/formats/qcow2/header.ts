/**
 * qcow2 header and header extensions (qemu docs/interop/qcow2.rst): parsed, validated and refused
 * early when the image uses something we must not read (encryption, corrupt bit, unknown features).
 */
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"

export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;

export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

/** qemu's own limits: beyond them qemu refuses the image, and so do we (they also bound our memory). */
export const MAX_L1_BYTES = 32 << 20;
export const MAX_REFTABLE_BYTES = 8 << 20;
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;

export type CompressionType = 'zlib' | 'zstd';

export interface Qcow2Header {
  version: 2 | 3;
  clusterBits: number;
  clusterSize: number;
  virtualSize: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatible: bigint;
  compatible: bigint;
  autoclear: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: CompressionType;
  extendedL2: boolean;
  backingFileOffset: number;
  backingFileSize: number;
  backingFormat?: string;
  dataFile?: string;
  hasDataFile: boolean;
  dataFileRaw: boolean;
  hasBitmaps: boolean;
  /** Names from the feature name table, keyed `type:bit` (type 0 incompatible, 1 compatible, 2 autoclear). */
  featureNames: Map<string, string>;
}

/** u64 as a safe JS number, or a CorruptError naming the field. */
function u64(buf: Buffer, off: number, what: string, path: string): number {
  const v = buf.readBigUInt64BE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new CorruptError(`${path}: qcow2: ${what} ${hex(v)} is out of range`);
  return Number(v);
}

function bitList(bits: bigint): number[] {
  const out: number[] = [];
  for (let i = 0; i < 64; i++) if (bits & (1n << BigInt(i))) out.push(i);
  return out;
}

/**
 * Parse the header cluster. `head` holds the start of the file (at least the first cluster, or the
 * whole file when it is shorter); `fileSize` bounds every offset.
 */
export function parseHeader(head: Buffer, fileSize: number, path: string): Qcow2Header {
  const fail = (msg: string): never => {
    throw new CorruptError(`${path}: qcow2: ${msg}`);
  };
  if (head.length < 72) fail(`file too short for a header (${head.length} bytes)`);
  if (head.readUInt32BE(0) !== QCOW2_MAGIC) fail('bad magic');
  const version = head.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw new SparsifyError(`${path}: qcow2 version ${version} is not supported (only 2 and 3)`);
  const clusterBits = head.readUInt32BE(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    fail(`cluster_bits ${clusterBits} out of range (${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS})`);
  }
  const clusterSize = 2 ** clusterBits;
  const h: Qcow2Header = {
    version,
    clusterBits,
    clusterSize,
    backingFileOffset: u64(head, 8, 'backing_file_offset', path),
    backingFileSize: head.readUInt32BE(16),
    virtualSize: u64(head, 24, 'virtual size', path),
    cryptMethod: head.readUInt32BE(32),
    l1Size: head.readUInt32BE(36),
    l1TableOffset: u64(head, 40, 'l1_table_offset', path),
    refcountTableOffset: u64(head, 48, 'refcount_table_offset', path),
    refcountTableClusters: head.readUInt32BE(56),
    nbSnapshots: head.readUInt32BE(60),
    snapshotsOffset: u64(head, 64, 'snapshots_offset', path),
    incompatible: 0n,
    compatible: 0n,
    autoclear: 0n,
    refcountOrder: 4,
    headerLength: 72,
    compressionType: 'zlib',
    extendedL2: false,
    hasDataFile: false,
    dataFileRaw: false,
    hasBitmaps: false,
    featureNames: new Map(),
  };

  if (version === 3) {
    if (head.length < 104) fail('file too short for a version 3 header');
    h.incompatible = head.readBigUInt64BE(72);
    h.compatible = head.readBigUInt64BE(80);
    h.autoclear = head.readBigUInt64BE(88);
    h.refcountOrder = head.readUInt32BE(96);
    h.headerLength = head.readUInt32BE(100);
    if (h.headerLength < 104 || h.headerLength % 8 !== 0 || h.headerLength > Math.min(clusterSize, head.length)) {
      fail(`header_length ${h.headerLength} is invalid`);
    }
    if (h.refcountOrder > 6) fail(`refcount_order ${h.refcountOrder} is greater than 6`);
  }

  // Extensions come before the refusal checks so the feature table can name unknown bits.
  parseExtensions(h, head, path, fail);

  if (h.cryptMethod !== 0) {
    throw new SparsifyError(`${path}: encrypted qcow2 images are not supported (crypt_method ${h.cryptMethod})`);
  }
  if (h.incompatible & INCOMPAT_CORRUPT) {
    throw new SparsifyError(`${path}: qcow2 image is marked corrupt; repair it with 'qemu-img check -r all' first`);
  }
  const unknown = h.incompatible & ~INCOMPAT_KNOWN;
  if (unknown) {
    const names = bitList(unknown).map((b) => h.featureNames.get(`0:${b}`) ?? `bit ${b}`);
    throw new SparsifyError(`${path}: qcow2 image uses unsupported incompatible features: ${names.join(', ')}`);
  }
  h.extendedL2 = (h.incompatible & INCOMPAT_EXTL2) !== 0n;
  h.hasDataFile = (h.incompatible & INCOMPAT_DATA_FILE) !== 0n;
  h.dataFileRaw = (h.autoclear & AUTOCLEAR_DATA_FILE_RAW) !== 0n;
  if (h.extendedL2 && clusterBits < 14) fail(`extended L2 entries need a cluster size of at least 16 KiB (cluster_bits ${clusterBits})`);

  if (h.incompatible & INCOMPAT_COMPRESSION) {
    if (h.headerLength <= 104) fail('compression type bit set but the header has no compression_type field');
    const t = head[104]!;
    if (t === 1) h.compressionType = 'zstd';
    else throw new SparsifyError(`${path}: qcow2 compression type ${t} is not supported`);
  } else if (h.headerLength > 104 && head[104] !== 0) {
    fail(`compression_type ${head[104]} set without the compression type feature bit`);
  }
  if (h.hasDataFile && h.dataFile === undefined) {
    throw new SparsifyError(`${path}: qcow2 image uses an external data file but does not name it`);
  }

  // Tables must lie inside the file and be cluster aligned.
  const checkRange = (what: string, off: number, len: number): void => {
    if (off % clusterSize !== 0) fail(`${what} at ${hex(off)} is not aligned to the cluster size (${hex(clusterSize)})`);
    if (off < clusterSize && len > 0) fail(`${what} at ${hex(off)} overlaps the image header`);
    if (off + len > fileSize) fail(`${what} at ${hex(off)} (+${hex(len)}) lies beyond end of file (size ${hex(fileSize)})`);
  };
  const l1Bytes = h.l1Size * 8;
  if (l1Bytes > MAX_L1_BYTES) fail(`L1 table has ${h.l1Size} entries, more than qemu's limit`);
  const l2Entries = clusterSize / (h.extendedL2 ? 16 : 8);
  const needL1 = Math.ceil(Math.ceil(h.virtualSize / clusterSize) / l2Entries);
  if (h.l1Size < needL1) fail(`L1 table (${h.l1Size} entries) is too small for the virtual size ${h.virtualSize} (needs ${needL1})`);
  if (h.l1Size > 0) checkRange('L1 table', h.l1TableOffset, l1Bytes);
  const refBytes = h.refcountTableClusters * clusterSize;
  if (refBytes > MAX_REFTABLE_BYTES) fail(`refcount table of ${h.refcountTableClusters} clusters exceeds qemu's limit`);
  if (refBytes === 0) fail('refcount table is empty');
  checkRange('refcount table', h.refcountTableOffset, refBytes);

  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize === 0 || h.backingFileSize > 1023) fail(`backing file name length ${h.backingFileSize} is invalid`);
    if (h.backingFileOffset + h.backingFileSize > fileSize) {
      fail(`backing file name at ${hex(h.backingFileOffset)} lies beyond end of file (size ${hex(fileSize)})`);
    }
    if (h.hasDataFile && h.dataFileRaw) fail('a raw external data file cannot be combined with a backing file');
  }
  return h;
}

function parseExtensions(h: Qcow2Header, head: Buffer, path: string, fail: (m: string) => never): void {
  // Extensions live between the header and the end of the first cluster.
  const limit = Math.min(h.clusterSize, head.length);
  let off = h.headerLength;
  // Each extension takes at least 8 bytes, so this loop is bounded by the cluster size.
  while (off + 8 <= limit) {
    const type = head.readUInt32BE(off);
    const len = head.readUInt32BE(off + 4);
    if (type === EXT_END) return;
    const data = off + 8;
    if (data + len > limit) fail(`header extension ${hex(type)} at ${hex(off)} runs past the header cluster`);
    const body = head.subarray(data, data + len);
    switch (type) {
      case EXT_BACKING_FORMAT:
        h.backingFormat = body.toString('latin1');
        break;
      case EXT_DATA_FILE:
        h.dataFile = body.toString('latin1');
        break;
      case EXT_CRYPTO:
        throw new SparsifyError(`${path}: encrypted qcow2 images are not supported (full disk encryption header present)`);
      case EXT_BITMAPS:
        h.hasBitmaps = true; // dirty bitmaps do not change what the disk reads
        break;
      case EXT_FEATURE_TABLE:
        for (let e = 0; e + 48 <= body.length; e += 48) {
          const name = body.subarray(e + 2, e + 48).toString('latin1').replace(/\0.*$/s, '');
          h.featureNames.set(`${body[e]}:${body[e + 1]}`, name);
        }
        break;
      default:
        break; // unknown extensions may be ignored
    }
    off = data + Math.ceil(len / 8) * 8;
  }
}
