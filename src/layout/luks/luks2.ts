/**
 * The LUKS2 header (cryptsetup's "LUKS2 On-Disk Format Specification" 1.1.x): two copies, each a
 * 4096-byte binary header followed by a JSON area, together `hdr_size` bytes. The primary is at 0,
 * the secondary right after it (at hdr_size).
 *
 * Binary header, big-endian: 0 magic ("LUKS\xba\xbe" primary, "SKUL\xba\xbe" secondary),
 * 6 u16 version (2), 8 u64 hdr_size, 16 u64 seqid, 24 label[48], 72 checksum_alg[32],
 * 104 salt[64], 168 uuid[40], 208 subsystem[48], 256 u64 hdr_offset, 448 csum[64].
 * The checksum covers the whole hdr_size bytes with the csum field zeroed. A copy is used only when
 * its magic, offset and checksum agree; when both are good the higher seqid wins, and a damaged
 * primary is replaced by the secondary with a warning.
 *
 * The JSON holds keyslots, segments, digests, tokens and config. Numbers that can exceed 2^53 are
 * decimal strings. Anything this reader does not implement (integrity, reencryption in progress,
 * several data segments, mandatory requirements) is refused by name, never guessed at.
 */
import { createHash, getHashes } from 'node:crypto';
import { CorruptError, SparsifyError, hex } from '../../io/errors.js';
import type { Volume } from '../volume.js';
import { cString } from './luks1.js';
import type { KeyDigest, Keyslot, LuksHeader } from './model.js';

export const MAGIC_PRIMARY = Buffer.from('4c554b53babe', 'hex'); // LUKS\xba\xbe
export const MAGIC_SECONDARY = Buffer.from('534b554cbabe', 'hex'); // SKUL\xba\xbe
const BINARY_HEADER = 4096;
const CSUM_AT = 448;
const CSUM_LEN = 64;
/** The header sizes the specification allows: 16 KiB .. 4 MiB, powers of two. */
const HDR_SIZES = [0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000];

interface Copy {
  offset: number;
  seqid: bigint;
  label: string;
  uuid: string;
  json: unknown;
}

/** Check one header copy at `offset`; a string says why it is not usable. */
async function readCopy(volume: Volume, offset: number, magic: Buffer): Promise<Copy | string> {
  if (offset + BINARY_HEADER > volume.size) return `it lies beyond the end of the volume`;
  const bin = await volume.readAt(offset, BINARY_HEADER);
  if (!bin.subarray(0, 6).equals(magic)) return 'bad magic';
  if (bin.readUInt16BE(6) !== 2) return `version ${bin.readUInt16BE(6)}`;
  const hdrSize = Number(bin.readBigUInt64BE(8));
  if (!HDR_SIZES.includes(hdrSize)) return `header size ${hex(hdrSize)} is not one LUKS2 allows`;
  if (Number(bin.readBigUInt64BE(256)) !== offset) return `it records offset ${hex(bin.readBigUInt64BE(256))}`;
  if (offset + hdrSize > volume.size) return `its JSON area (${hex(hdrSize)} bytes) lies beyond the end of the volume`;
  const alg = cString(bin.subarray(72, 104)).toLowerCase();
  if (!['sha1', 'sha256', 'sha512'].includes(alg) || !getHashes().includes(alg)) return `checksum algorithm '${alg}' is not supported`;
  const area = await volume.readAt(offset + BINARY_HEADER, hdrSize - BINARY_HEADER);
  const stored = Buffer.from(bin.subarray(CSUM_AT, CSUM_AT + CSUM_LEN));
  bin.fill(0, CSUM_AT, CSUM_AT + CSUM_LEN);
  const sum = createHash(alg).update(bin).update(area).digest();
  if (!sum.equals(stored.subarray(0, sum.length))) return `${alg} checksum mismatch`;
  const nul = area.indexOf(0);
  let json: unknown;
  try {
    json = JSON.parse(area.subarray(0, nul < 0 ? area.length : nul).toString('utf8'));
  } catch {
    return 'its JSON metadata does not parse';
  }
  return { offset, seqid: bin.readBigUInt64BE(16), label: cString(bin.subarray(24, 72)), uuid: cString(bin.subarray(168, 208)), json };
}

/** Choose the header copy to use: both checked, the newer wins, a damaged one is reported. */
async function chooseCopy(volume: Volume, device: string): Promise<{ copy: Copy; warnings: string[] }> {
  const primary = await readCopy(volume, 0, MAGIC_PRIMARY);
  // The secondary sits at the primary's hdr_size; when the primary is unreadable, look at each size.
  const head = volume.size >= 16 ? await volume.readAt(0, 16) : Buffer.alloc(16);
  const declared = head.subarray(0, 6).equals(MAGIC_PRIMARY) ? Number(head.readBigUInt64BE(8)) : 0;
  const offsets = typeof primary !== 'string' || HDR_SIZES.includes(declared) ? [declared] : HDR_SIZES;
  let secondary: Copy | string = 'not found';
  for (const off of offsets) {
    secondary = await readCopy(volume, off, MAGIC_SECONDARY);
    if (typeof secondary !== 'string') break;
  }
  if (typeof primary !== 'string' && typeof secondary !== 'string') {
    return { copy: secondary.seqid > primary.seqid ? secondary : primary, warnings: [] };
  }
  if (typeof primary !== 'string') {
    return { copy: primary, warnings: [`secondary LUKS2 header is damaged (${secondary as string}); using the primary`] };
  }
  if (typeof secondary !== 'string') {
    return { copy: secondary, warnings: [`primary LUKS2 header is damaged (${primary}); using the secondary header at ${hex(secondary.offset)}`] };
  }
  throw new CorruptError(`${device}: no usable LUKS2 header: primary: ${primary}; secondary: ${secondary}`);
}

// --- JSON metadata -------------------------------------------------------------------------------

type Json = Record<string, unknown>;

function obj(v: unknown, what: string, device: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new CorruptError(`${device}: LUKS2 metadata: ${what} is not an object`);
  return v as Json;
}

function str(v: unknown, what: string, device: string): string {
  if (typeof v !== 'string') throw new CorruptError(`${device}: LUKS2 metadata: ${what} is not a string`);
  return v;
}

/** A JSON number, or a decimal string (LUKS2 writes 64-bit values as strings). */
function num(v: unknown, what: string, device: string): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d{1,16}$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < 0) throw new CorruptError(`${device}: LUKS2 metadata: ${what} is not a valid number`);
  return n;
}

function b64(v: unknown, what: string, device: string): Buffer {
  const s = str(v, what, device);
  if (!/^[A-Za-z0-9+/=\s]*$/.test(s)) throw new CorruptError(`${device}: LUKS2 metadata: ${what} is not base64`);
  return Buffer.from(s, 'base64');
}

function parseKeyslot(id: string, raw: unknown, device: string): Keyslot | undefined {
  const k = obj(raw, `keyslot ${id}`, device);
  // 'reencrypt' slots hold no key; a slot type we do not know is skipped the same way.
  if (k['type'] !== 'luks2') return undefined;
  const af = obj(k['af'], `keyslot ${id} af`, device);
  if (af['type'] !== 'luks1') throw new SparsifyError(`${device}: LUKS2 keyslot ${id}: anti-forensic splitter '${String(af['type'])}' is not supported`);
  const area = obj(k['area'], `keyslot ${id} area`, device);
  if (area['type'] !== 'raw') throw new SparsifyError(`${device}: LUKS2 keyslot ${id}: area type '${String(area['type'])}' is not supported`);
  const kdf = obj(k['kdf'], `keyslot ${id} kdf`, device);
  const kdfType = str(kdf['type'], `keyslot ${id} kdf type`, device);
  const salt = b64(kdf['salt'], `keyslot ${id} kdf salt`, device);
  let parsedKdf: Keyslot['kdf'];
  if (kdfType === 'pbkdf2') {
    parsedKdf = { type: 'pbkdf2', hash: str(kdf['hash'], `keyslot ${id} kdf hash`, device).toLowerCase(), iterations: num(kdf['iterations'], `keyslot ${id} iterations`, device), salt };
  } else if (kdfType === 'argon2i' || kdfType === 'argon2id') {
    parsedKdf = {
      type: kdfType,
      time: num(kdf['time'], `keyslot ${id} kdf time`, device),
      memoryKiB: num(kdf['memory'], `keyslot ${id} kdf memory`, device),
      cpus: num(kdf['cpus'], `keyslot ${id} kdf cpus`, device),
      salt,
    };
  } else {
    throw new SparsifyError(`${device}: LUKS2 keyslot ${id}: key derivation '${kdfType}' is not supported (pbkdf2, argon2i, argon2id are)`);
  }
  return {
    id,
    kdf: parsedKdf,
    area: { offset: num(area['offset'], `keyslot ${id} area offset`, device), length: num(area['size'], `keyslot ${id} area size`, device) },
    areaCipher: str(area['encryption'], `keyslot ${id} area encryption`, device),
    areaKeySize: num(area['key_size'], `keyslot ${id} area key_size`, device),
    keySize: num(k['key_size'], `keyslot ${id} key_size`, device),
    stripes: num(af['stripes'], `keyslot ${id} af stripes`, device),
    afHash: str(af['hash'], `keyslot ${id} af hash`, device).toLowerCase(),
    priority: k['priority'] === undefined ? 1 : num(k['priority'], `keyslot ${id} priority`, device),
  };
}

function parseDigest(id: string, raw: unknown, device: string): KeyDigest {
  const d = obj(raw, `digest ${id}`, device);
  if (d['type'] !== 'pbkdf2') throw new SparsifyError(`${device}: LUKS2 digest ${id}: type '${String(d['type'])}' is not supported`);
  const slots = d['keyslots'];
  if (!Array.isArray(slots) || !slots.every((s) => typeof s === 'string')) throw new CorruptError(`${device}: LUKS2 metadata: digest ${id} keyslots is not a list of ids`);
  return {
    keyslots: slots as string[],
    hash: str(d['hash'], `digest ${id} hash`, device).toLowerCase(),
    iterations: num(d['iterations'], `digest ${id} iterations`, device),
    salt: b64(d['salt'], `digest ${id} salt`, device),
    digest: b64(d['digest'], `digest ${id} digest`, device),
  };
}

/** The single data segment, refused by name when it needs what this reader does not implement. */
function parseSegment(json: Json, device: string): Pick<LuksHeader, 'cipher' | 'sectorSize' | 'ivTweak' | 'payloadOffset' | 'payloadSize'> {
  const segments = Object.entries(obj(json['segments'], 'segments', device));
  if (segments.length !== 1) {
    throw new SparsifyError(`${device}: LUKS2 volume with ${segments.length} data segments (a reencryption in progress?) is not supported`);
  }
  const [id, raw] = segments[0]!;
  const s = obj(raw, `segment ${id}`, device);
  if (s['type'] !== 'crypt') throw new SparsifyError(`${device}: LUKS2 segment type '${String(s['type'])}' is not supported`);
  if (s['integrity'] !== undefined) throw new SparsifyError(`${device}: LUKS2 authenticated encryption (dm-integrity) is not supported`);
  const flags = s['flags'];
  if (Array.isArray(flags) && flags.length) throw new SparsifyError(`${device}: LUKS2 segment flags ${flags.join(', ')} are not supported`);
  const sectorSize = num(s['sector_size'], `segment ${id} sector_size`, device);
  if (![512, 1024, 2048, 4096].includes(sectorSize)) throw new CorruptError(`${device}: LUKS2 segment ${id}: sector size ${sectorSize} is not valid`);
  const size = s['size'] === 'dynamic' ? undefined : num(s['size'], `segment ${id} size`, device);
  return {
    cipher: str(s['encryption'], `segment ${id} encryption`, device),
    sectorSize,
    ivTweak: num(s['iv_tweak'] ?? '0', `segment ${id} iv_tweak`, device),
    payloadOffset: num(s['offset'], `segment ${id} offset`, device),
    payloadSize: size,
  };
}

/** Read and check a LUKS2 header (both copies) and its metadata. */
export async function readLuks2(volume: Volume): Promise<LuksHeader> {
  const device = volume.name;
  const { copy, warnings } = await chooseCopy(volume, device);
  const json = obj(copy.json, 'the metadata', device);
  const config = obj(json['config'] ?? {}, 'config', device);
  const requirements = config['requirements'] === undefined ? {} : obj(config['requirements'], 'config requirements', device);
  const mandatory = requirements['mandatory'];
  if (Array.isArray(mandatory) && mandatory.length) {
    throw new SparsifyError(`${device}: LUKS2 requirement ${mandatory.map((m) => `'${String(m)}'`).join(', ')} is not supported`);
  }
  const keyslots: Keyslot[] = [];
  for (const [id, raw] of Object.entries(obj(json['keyslots'], 'keyslots', device))) {
    const k = parseKeyslot(id, raw, device);
    if (k) keyslots.push(k);
  }
  const digests = Object.entries(obj(json['digests'], 'digests', device)).map(([id, raw]) => parseDigest(id, raw, device));
  const segment = parseSegment(json, device);
  const keySize = keyslots[0]?.keySize ?? 0;
  return {
    version: 2,
    uuid: copy.uuid,
    ...(copy.label ? { label: copy.label } : {}),
    ...segment,
    keySize,
    keyslots,
    digests,
    headerOffset: copy.offset,
    warnings,
  };
}
