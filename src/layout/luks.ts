/**
 * LUKS1/LUKS2 detection. Without the key nothing inside can be parsed, so the container is kept
 * whole: no children, no free space, and an info line saying why. The header is read only to
 * show version, UUID, label and cipher in --analyze.
 *
 * LUKS1 header (big-endian): magic "LUKS\xba\xbe", u16 version @6, cipherName[32] @8,
 * cipherMode[32] @40, hashSpec[32] @72, payloadOffset u32 @104 (sectors), uuid[40] @168.
 * LUKS2 binary header: magic, u16 version @6, u64 hdr_size @8, label[48] @24, uuid[40] @168,
 * u64 hdr_offset @256, then the JSON metadata up to hdr_size. The secondary copy has the magic
 * "SKUL\xba\xbe" at one of a few fixed offsets and records its own offset in hdr_offset.
 */
import { Extents } from '../io/extents.js';
import type { Volume } from './volume.js';
import type { ContainerAnalysis, ContainerReader } from './types.js';

const MAGIC1 = Buffer.from('4c554b53babe', 'hex'); // LUKS\xba\xbe
const MAGIC2 = Buffer.from('534b554cbabe', 'hex'); // SKUL\xba\xbe
const SECONDARY_OFFSETS = [0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000];
const BIN_HDR = 512;
/** LUKS2 metadata areas are at most 4 MiB (hdr_size includes the 4 KiB binary header). */
const MAX_HDR_SIZE = 4 << 20;

interface Found {
  offset: number;
  header: Buffer;
  version: number;
}

function cString(buf: Buffer): string {
  const nul = buf.indexOf(0);
  return buf.subarray(0, nul < 0 ? buf.length : nul).toString('latin1').trim();
}

async function findHeader(volume: Volume): Promise<Found | undefined> {
  if (volume.size < BIN_HDR) return undefined;
  const primary = await volume.readAt(0, BIN_HDR);
  if (primary.subarray(0, 6).equals(MAGIC1)) {
    const version = primary.readUInt16BE(6);
    // Like libblkid: a LUKS2 header must record its own offset.
    if (version !== 2 || Number(primary.readBigUInt64BE(256)) === 0) return { offset: 0, header: primary, version };
  }
  for (const off of SECONDARY_OFFSETS) {
    if (off + BIN_HDR > volume.size) break;
    const h = await volume.readAt(off, BIN_HDR);
    if (h.subarray(0, 6).equals(MAGIC2) && h.readUInt16BE(6) === 2 && Number(h.readBigUInt64BE(256)) === off) {
      return { offset: off, header: h, version: 2 };
    }
  }
  return undefined;
}

/** The cipher of the first data segment, from the LUKS2 JSON area; undefined when unreadable. */
async function luks2Cipher(volume: Volume, found: Found): Promise<string | undefined> {
  const hdrSize = Number(found.header.readBigUInt64BE(8));
  if (hdrSize <= 4096 || hdrSize > MAX_HDR_SIZE || found.offset + hdrSize > volume.size) return undefined;
  const json = cString(await volume.readAt(found.offset + 4096, hdrSize - 4096));
  try {
    const meta = JSON.parse(json) as { segments?: Record<string, { encryption?: unknown }> };
    const seg = meta.segments ? Object.values(meta.segments)[0] : undefined;
    return typeof seg?.encryption === 'string' ? seg.encryption : undefined;
  } catch {
    return undefined;
  }
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

  async analyze(volume: Volume): Promise<ContainerAnalysis> {
    const found = await findHeader(volume);
    const version = found?.version ?? 0;
    const type = version === 1 ? 'luks1' : 'luks2';
    const out: ContainerAnalysis = {
      type,
      children: [],
      free: new Extents(),
      warnings: [],
      info: [`encrypted (LUKS${version || ''}) volume kept whole: it cannot be sparsified without its key`],
      details: { version },
    };
    if (!found) {
      out.warnings.push('LUKS header vanished while reading; kept whole');
      return out;
    }
    const h = found.header;
    const details = out.details!;
    if (version === 1) {
      const cipher = cString(h.subarray(8, 40));
      const mode = cString(h.subarray(40, 72));
      if (cipher) details.cipher = mode ? `${cipher}-${mode}` : cipher;
      details.payloadOffset = h.readUInt32BE(104) * 512;
      const uuid = cString(h.subarray(168, 208));
      if (uuid) details.uuid = uuid;
    } else if (version === 2) {
      const uuid = cString(h.subarray(168, 208));
      if (uuid) details.uuid = uuid;
      const label = cString(h.subarray(24, 72));
      if (label) details.label = label;
      if (found.offset !== 0) {
        details.headerOffset = found.offset;
        out.warnings.push('primary LUKS2 header is damaged; found the secondary header');
      }
      const cipher = await luks2Cipher(volume, found);
      if (cipher) details.cipher = cipher;
    } else {
      out.type = 'luks';
      out.warnings.push(`unknown LUKS version ${version}; kept whole`);
    }
    return out;
  },
};
