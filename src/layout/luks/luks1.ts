/**
 * The LUKS1 header (cryptsetup's "LUKS On-Disk Format Specification" version 1.2.3), big-endian:
 *
 *   0 magic "LUKS\xba\xbe"   6 u16 version (1)    8 cipher-name[32]   40 cipher-mode[32]
 *  72 hash-spec[32]        104 u32 payload-offset (512-byte sectors)  108 u32 key-bytes
 * 112 mk-digest[20]        132 mk-digest-salt[32] 164 u32 mk-digest-iter 168 uuid[40]
 * 208 eight keyslots of 48 bytes: u32 active (0x00AC71F3 enabled, 0x0000DEAD disabled),
 *     u32 iterations, salt[32], u32 key-material-offset (sectors), u32 stripes.
 *
 * The volume key is checked by PBKDF2(hash-spec, key, mk-digest-salt, mk-digest-iter, 20). Each
 * keyslot's material is the AF-split key (key-bytes * stripes bytes) encrypted with the volume's
 * own cipher under PBKDF2(hash-spec, passphrase, salt, iterations, key-bytes).
 */
import { CorruptError, hex } from '../../io/errors.js';
import type { Keyslot, LuksHeader } from './model.js';

export const LUKS1_HEADER_SIZE = 592;
const KEYSLOT_ENABLED = 0x00ac71f3;
const KEYSLOT_DISABLED = 0x0000dead;
const SECTOR = 512;
/** Volume keys cryptsetup makes are at most 512 bits; stripes are 4000. Bound both generously. */
const MAX_KEY_BYTES = 128;
const MAX_STRIPES = 1 << 16;

export function cString(buf: Buffer): string {
  const nul = buf.indexOf(0);
  return buf.subarray(0, nul < 0 ? buf.length : nul).toString('latin1').trim();
}

/** Parse a LUKS1 header from its first 592 bytes; `volumeSize` bounds every offset. */
export function parseLuks1(h: Buffer, volumeSize: number, device: string): LuksHeader {
  const where = `${device}: LUKS1 header`;
  const cipherName = cString(h.subarray(8, 40));
  const cipherMode = cString(h.subarray(40, 72));
  const hash = cString(h.subarray(72, 104)).toLowerCase();
  const payloadOffset = h.readUInt32BE(104) * SECTOR;
  const keyBytes = h.readUInt32BE(108);
  if (keyBytes === 0 || keyBytes > MAX_KEY_BYTES) throw new CorruptError(`${where}: key size ${keyBytes} bytes is not plausible`);
  if (payloadOffset > volumeSize) {
    throw new CorruptError(`${where}: payload offset ${hex(payloadOffset)} lies beyond the end of the volume (size ${hex(volumeSize)})`);
  }
  const keyslots: Keyslot[] = [];
  for (let i = 0; i < 8; i++) {
    const at = 208 + i * 48;
    const active = h.readUInt32BE(at);
    if (active === KEYSLOT_DISABLED) continue;
    if (active !== KEYSLOT_ENABLED) throw new CorruptError(`${where}: keyslot ${i} at ${hex(at)} has an unknown state ${hex(active)}`);
    const stripes = h.readUInt32BE(at + 44);
    if (stripes === 0 || stripes > MAX_STRIPES) throw new CorruptError(`${where}: keyslot ${i} has ${stripes} AF stripes`);
    const offset = h.readUInt32BE(at + 40) * SECTOR;
    const length = Math.ceil((keyBytes * stripes) / SECTOR) * SECTOR;
    keyslots.push({
      id: String(i),
      kdf: { type: 'pbkdf2', hash, iterations: h.readUInt32BE(at + 4), salt: Buffer.from(h.subarray(at + 8, at + 40)) },
      area: { offset, length },
      areaCipher: `${cipherName}-${cipherMode}`,
      areaKeySize: keyBytes,
      keySize: keyBytes,
      stripes,
      afHash: hash,
      priority: 1,
    });
  }
  return {
    version: 1,
    uuid: cString(h.subarray(168, 208)),
    cipher: `${cipherName}-${cipherMode}`,
    keySize: keyBytes,
    sectorSize: SECTOR,
    ivTweak: 0,
    payloadOffset,
    keyslots,
    digests: [
      {
        keyslots: keyslots.map((k) => k.id),
        hash,
        iterations: h.readUInt32BE(164),
        salt: Buffer.from(h.subarray(132, 164)),
        digest: Buffer.from(h.subarray(112, 132)),
      },
    ],
    headerOffset: 0,
    warnings: [],
  };
}
