/**
 * What a LUKS1 or LUKS2 header says, in one shape: the data segment (where the ciphertext is and
 * how it is encrypted), the keyslots (how a passphrase becomes the key that opens the volume key)
 * and the digests that tell a right volume key from a wrong one. Offsets are bytes from the start
 * of the LUKS volume; nothing here is secret.
 */

export type Kdf =
  | { type: 'pbkdf2'; hash: string; iterations: number; salt: Buffer }
  | { type: 'argon2i' | 'argon2id'; time: number; memoryKiB: number; cpus: number; salt: Buffer };

export interface Keyslot {
  /** '0'..'7' for LUKS1, the JSON key for LUKS2. */
  id: string;
  kdf: Kdf;
  /** The AF-split, encrypted volume key: `length` bytes at `offset`. */
  area: { offset: number; length: number };
  /** Cipher of the keyslot area (512-byte sectors, IVs from 0) and the size of its key. */
  areaCipher: string;
  areaKeySize: number;
  /** Size of the volume key this slot holds. */
  keySize: number;
  /** Anti-forensic splitter: stripes and hash. */
  stripes: number;
  afHash: string;
  /** LUKS2 priority: 2 high (tried first), 1 normal, 0 ignore (never tried); LUKS1 slots are 1. */
  priority: number;
}

/** PBKDF2 of a candidate volume key that must equal `digest` for the key to be right. */
export interface KeyDigest {
  /** Keyslots whose volume key this digest checks. */
  keyslots: string[];
  hash: string;
  iterations: number;
  salt: Buffer;
  digest: Buffer;
}

export interface LuksHeader {
  version: 1 | 2;
  uuid: string;
  label?: string;
  /** cryptsetup's cipher spec of the data: aes-xts-plain64, aes-cbc-essiv:sha256. */
  cipher: string;
  /** Volume key size in bytes. */
  keySize: number;
  /** Encryption sector size of the data: 512 for LUKS1, 512..4096 for LUKS2. */
  sectorSize: number;
  /** Added to the sector number of each data sector to form its IV (LUKS2 iv_tweak). */
  ivTweak: number;
  /** Where the ciphertext starts, and its length (undefined: up to the end of the volume). */
  payloadOffset: number;
  payloadSize?: number;
  keyslots: Keyslot[];
  digests: KeyDigest[];
  /** LUKS2: the offset of the header copy in use (0 unless the primary is damaged). */
  headerOffset: number;
  /** Damage found and worked around (a bad primary header). */
  warnings: string[];
}
