/**
 * Sector decryption as dm-crypt does it, for the ciphers installers use:
 * - aes-xts-plain64: XTS with a 256 or 512-bit key (AES-128/256); the IV is the sector number,
 *   64-bit little-endian, zero-padded to 16 bytes.
 * - aes-cbc-essiv:sha256: CBC whose IV is the sector number (as above) encrypted with AES-ECB
 *   under sha256(volume key).
 * - the plain (32-bit) and plain64 IVs with either mode.
 * Each sector is one XTS data unit or one CBC chain, so each gets its own decipher. Anything else
 * is refused by name. `wipe()` zeroes the keys held.
 */
import { createCipheriv, createDecipheriv, createHash } from 'node:crypto';
import { SparsifyError } from '../../io/errors.js';

export const SUPPORTED_CIPHERS = 'aes-xts-plain64, aes-xts-plain, aes-cbc-essiv:sha256, aes-cbc-plain64, aes-cbc-plain';

export interface SectorCipher {
  readonly spec: string;
  readonly sectorSize: number;
  /** Decrypt whole sectors in place; `firstSector` is the index (in sectorSize units) of data[0]. */
  decrypt(data: Buffer, firstSector: number): void;
  wipe(): void;
}

interface ParsedSpec {
  mode: 'xts' | 'cbc';
  iv: 'plain' | 'plain64' | 'essiv';
}

function parseSpec(spec: string, keySize: number): ParsedSpec {
  const m = /^aes-(xts|cbc)-(plain|plain64|essiv:sha256)$/.exec(spec.toLowerCase());
  if (!m) throw new SparsifyError(`cipher '${spec}' is not supported (supported: ${SUPPORTED_CIPHERS})`);
  const mode = m[1] as 'xts' | 'cbc';
  const iv = m[2] === 'essiv:sha256' ? 'essiv' : (m[2] as 'plain' | 'plain64');
  if (mode === 'xts' && iv === 'essiv') throw new SparsifyError(`cipher '${spec}' is not supported (supported: ${SUPPORTED_CIPHERS})`);
  const sizes = mode === 'xts' ? [32, 64] : [16, 24, 32];
  if (!sizes.includes(keySize)) throw new SparsifyError(`cipher '${spec}' with a ${keySize * 8}-bit key is not supported (${sizes.map((s) => s * 8).join(' or ')} bits are)`);
  return { mode, iv };
}

/** Check a cipher spec and key size without a key (to refuse early, before deriving anything). */
export function checkCipher(spec: string, keySize: number): void {
  parseSpec(spec, keySize);
}

/**
 * IV numbering: sector index i gets IV number i * ivStep + ivTweak. dm-crypt counts IVs in 512-byte
 * units (ivStep = sectorSize / 512), as LUKS1 and LUKS2 volumes use it; ivStep = 1 is dm-crypt's
 * iv_large_sectors.
 */
export interface IvNumbering {
  ivStep: number;
  ivTweak: number;
}

export function sectorCipher(spec: string, key: Buffer, sectorSize: number, numbering: IvNumbering = { ivStep: 1, ivTweak: 0 }): SectorCipher {
  const { mode, iv: ivKind } = parseSpec(spec, key.length);
  const ownKey = Buffer.from(key);
  const algorithm = mode === 'xts' ? `aes-${ownKey.length * 4}-xts` : `aes-${ownKey.length * 8}-cbc`;
  const essivKey = ivKind === 'essiv' ? createHash('sha256').update(ownKey).digest() : undefined;
  const iv = Buffer.alloc(16);

  const setIv = (sector: number): void => {
    iv.fill(0);
    if (ivKind === 'plain') iv.writeUInt32LE(sector % 0x1_0000_0000, 0);
    else iv.writeBigUInt64LE(BigInt(sector), 0);
    if (essivKey) {
      const e = createCipheriv('aes-256-ecb', essivKey, null).setAutoPadding(false);
      const out = e.update(iv);
      out.copy(iv);
      out.fill(0);
    }
  };

  return {
    spec,
    sectorSize,
    decrypt(data: Buffer, firstSector: number): void {
      if (data.length % sectorSize !== 0) throw new Error(`decrypt: ${data.length} bytes is not whole ${sectorSize}-byte sectors`);
      for (let at = 0, sector = firstSector; at < data.length; at += sectorSize, sector++) {
        setIv(sector * numbering.ivStep + numbering.ivTweak);
        const d = createDecipheriv(algorithm, ownKey, iv).setAutoPadding(false);
        const chunk = data.subarray(at, at + sectorSize);
        const out = d.update(chunk);
        out.copy(chunk);
        out.fill(0);
        d.final();
      }
    },
    wipe(): void {
      ownKey.fill(0);
      essivKey?.fill(0);
      iv.fill(0);
    },
  };
}
