/**
 * LUKS1/LUKS2 containers. Without a key nothing inside can be parsed, so the container is kept
 * whole: no children, no free space, and an info line saying why. With a key (--key, the
 * service's keys file), the volume key is opened from a keyslot and the payload becomes a child
 * volume that decrypts as it is read; what is inside is analyzed like any disk content.
 *
 * Free plaintext sectors are free ciphertext sectors at the same disk offsets, so the plan drops
 * the ciphertext directly: holes in a copy, punched in place. The header and keyslot areas are
 * never free. A key that opens nothing, or a volume a key was given for that cannot be opened,
 * stops the operation (FatalError): the user asked for its inside to be sparsified.
 *
 * Detection: the primary header has the magic "LUKS\xba\xbe" at 0 and its version at 6; a LUKS2
 * secondary copy ("SKUL\xba\xbe") at one of the allowed header sizes is found when the primary is
 * damaged. Parsing: ./luks/luks1.ts, ./luks/luks2.ts; unlocking: ./luks/unlock.ts.
 */
import { Extents } from '../io/extents.js';
import { FatalError, SparsifyError } from '../io/errors.js';
import { Volume } from './volume.js';
import type { ContainerAnalysis, ContainerContext, ContainerReader } from './types.js';
import { LUKS1_HEADER_SIZE, cString, parseLuks1 } from './luks/luks1.js';
import { MAGIC_PRIMARY, MAGIC_SECONDARY, readLuks2 } from './luks/luks2.js';
import type { LuksHeader } from './luks/model.js';
import { unlockVolumeKey } from './luks/unlock.js';
import { sectorCipher } from './luks/sector-cipher.js';
import { DecryptedSource } from './luks/decrypted-source.js';

const SECONDARY_OFFSETS = [0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000];
const BIN_HDR = 512;

interface Found {
  offset: number;
  header: Buffer;
  version: number;
}

async function findHeader(volume: Volume): Promise<Found | undefined> {
  if (volume.size < BIN_HDR) return undefined;
  const primary = await volume.readAt(0, BIN_HDR);
  if (primary.subarray(0, 6).equals(MAGIC_PRIMARY)) {
    const version = primary.readUInt16BE(6);
    // Like libblkid: a LUKS2 header must record its own offset.
    if (version !== 2 || Number(primary.readBigUInt64BE(256)) === 0) return { offset: 0, header: primary, version };
  }
  for (const off of SECONDARY_OFFSETS) {
    if (off + BIN_HDR > volume.size) break;
    const h = await volume.readAt(off, BIN_HDR);
    if (h.subarray(0, 6).equals(MAGIC_SECONDARY) && h.readUInt16BE(6) === 2 && Number(h.readBigUInt64BE(256)) === off) {
      return { offset: off, header: h, version: 2 };
    }
  }
  return undefined;
}

async function readHeader(volume: Volume, found: Found): Promise<LuksHeader> {
  if (found.version === 1) {
    if (volume.size < LUKS1_HEADER_SIZE) throw new SparsifyError(`${volume.name}: LUKS1 header is truncated`);
    return parseLuks1(await volume.readAt(0, LUKS1_HEADER_SIZE), volume.size, volume.name);
  }
  if (found.version === 2) return readLuks2(volume);
  throw new SparsifyError(`${volume.name}: LUKS version ${found.version} is not supported`);
}

/** What --analyze shows of a header that could not be parsed in full: the binary fields. */
function rawDetails(found: Found): Record<string, string | number | boolean> {
  const h = found.header;
  const details: Record<string, string | number | boolean> = { version: found.version };
  const uuid = cString(h.subarray(168, 208));
  if (uuid) details.uuid = uuid;
  if (found.version === 1) {
    const cipher = cString(h.subarray(8, 40));
    const mode = cString(h.subarray(40, 72));
    if (cipher) details.cipher = mode ? `${cipher}-${mode}` : cipher;
    details.payloadOffset = h.readUInt32BE(104) * 512;
  } else if (found.version === 2) {
    const label = cString(h.subarray(24, 72));
    if (label) details.label = label;
  }
  return details;
}

function headerDetails(h: LuksHeader): Record<string, string | number | boolean> {
  return {
    version: h.version,
    ...(h.uuid ? { uuid: h.uuid } : {}),
    ...(h.label ? { label: h.label } : {}),
    cipher: h.cipher,
    keyBits: h.keySize * 8,
    sectorSize: h.sectorSize,
    payloadOffset: h.payloadOffset,
    keyslots: h.keyslots.length,
    ...(h.headerOffset ? { headerOffset: h.headerOffset } : {}),
  };
}

/**
 * libguestfs's name for the opened mapping (virt-sparsify 1.48 prints it: "Fill free space in
 * /dev/mapper/luks-UUID"), so --ignore and --zero names carry over; without a UUID, its older
 * crypt<device> form.
 */
export function mapperName(device: string, uuid: string): string {
  return uuid ? `/dev/mapper/luks-${uuid}` : `/dev/mapper/crypt${device.replace(/^\/dev\//, '').replace(/\//g, '')}`;
}

/** Open the volume key with `keys` and give the payload as a child volume that decrypts. */
async function unlock(volume: Volume, header: LuksHeader, keys: Buffer[], ctx: ContainerContext, out: ContainerAnalysis): Promise<void> {
  const { volumeKey, keyslot, skipped } = await unlockVolumeKey(volume, header, keys, ctx.trace);
  const available = volume.size - header.payloadOffset;
  const size = header.payloadSize ?? available;
  if (header.payloadOffset === 0 || size < header.sectorSize || size > available) {
    volumeKey.fill(0);
    throw new FatalError(`${volume.name}: LUKS${header.version} data segment at ${header.payloadOffset}+${size} does not fit the volume (size ${volume.size})`);
  }
  // dm-crypt counts IVs in 512-byte units whatever the sector size (cryptsetup sets no
  // iv_large_sectors for LUKS); iv_tweak is in the same units.
  const cipher = sectorCipher(header.cipher, volumeKey, header.sectorSize, { ivStep: header.sectorSize / 512, ivTweak: header.ivTweak });
  volumeKey.fill(0);
  const whole = Math.floor(size / header.sectorSize) * header.sectorSize;
  const payload = volume.slice(volume.name, header.payloadOffset, whole);
  const child = new Volume(new DecryptedSource(payload, cipher), mapperName(volume.name, header.uuid), payload.segments);
  ctx.trace(`${volume.name}: opened with keyslot ${keyslot}; ${child.name} is ${whole} bytes at ${header.payloadOffset}`);
  out.children.push({ volume: child, details: { luks: volume.name, keyslot } });
  out.warnings.push(...skipped.map((s) => `${s}; used keyslot ${keyslot}`));
  out.encrypted = { payload: child, sectorSize: header.sectorSize, wipe: () => cipher.wipe() };
}

export const luksReader: ContainerReader = {
  name: 'luks',
  scope: 'any',

  async probe(volume: Volume): Promise<boolean> {
    try {
      return (await findHeader(volume)) !== undefined;
    } catch {
      return false;
    }
  },

  async analyze(volume: Volume, ctx: ContainerContext = { trace: () => undefined }): Promise<ContainerAnalysis> {
    const found = await findHeader(volume);
    const version = found?.version ?? 0;
    const out: ContainerAnalysis = {
      type: version === 1 ? 'luks1' : version === 2 ? 'luks2' : 'luks',
      children: [],
      free: new Extents(),
      warnings: [],
      info: [],
      details: { version },
    };
    if (!found) {
      out.warnings.push('LUKS header vanished while reading; kept whole');
      return out;
    }
    let header: LuksHeader | undefined;
    let problem: string | undefined;
    try {
      header = await readHeader(volume, found);
    } catch (e) {
      if (!(e instanceof SparsifyError)) throw e;
      problem = e.message;
    }
    out.details = header ? headerDetails(header) : rawDetails(found);
    out.warnings.push(...(header?.warnings ?? []));
    const uuid = header?.uuid ?? String(out.details.uuid ?? '');
    const keys = ctx.keys ? await ctx.keys.keysFor({ device: volume.name, uuid }) : [];
    if (keys.length === 0 || !header) {
      if (keys.length) throw new FatalError(problem!.startsWith(volume.name) ? problem! : `${volume.name}: ${problem}`);
      if (problem) out.warnings.push(`${problem}; kept whole`);
      out.info!.push(`encrypted (LUKS${version}) volume kept whole: it cannot be sparsified without its key`);
      return out;
    }
    await unlock(volume, header, keys, ctx, out);
    return out;
  },
};
