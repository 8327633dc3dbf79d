/**
 * Opening a LUKS volume key with a passphrase: for each key given and each keyslot (LUKS2
 * priority order; "ignore" slots never), derive the slot key, decrypt the slot's area (512-byte
 * sectors, IVs from 0), merge the AF stripes and check the candidate against the header's digest.
 *
 * Every slot is checked before any derivation: an area beyond the end of the volume, an
 * unsupported cipher or hash, a KDF cost over the caps, or an Argon2 KDF without its optional
 * addon makes the slot unusable, and when no slot is usable the error says why. Secrets (derived keys, stripes, wrong candidates) are zeroed
 * as soon as they are used; the volume key returned is the caller's to zero.
 */
import { pbkdf2, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import { FatalError, hex } from '../../io/errors.js';
import type { Volume } from '../volume.js';
import { afMerge } from './af.js';
import { HASHES, deriveKey, kdfCostProblem, kdfUnavailable } from './kdf.js';
import type { KeyDigest, Keyslot, LuksHeader } from './model.js';
import { checkCipher, sectorCipher } from './sector-cipher.js';

const pbkdf2Async = promisify(pbkdf2);
const AREA_SECTOR = 512;

/** Why a keyslot cannot be tried, or undefined when it can. */
function slotProblem(slot: Keyslot, header: LuksHeader, volume: Volume): string | undefined {
  const need = Math.ceil((slot.keySize * slot.stripes) / AREA_SECTOR) * AREA_SECTOR;
  const { offset, length } = slot.area;
  if (slot.keySize !== header.keySize) return `holds a ${slot.keySize}-byte key, the volume uses ${header.keySize}`;
  if (length < need) return `key material area ${hex(offset)}+${hex(length)} is smaller than its ${slot.stripes} stripes (${need} bytes)`;
  if (offset + need > volume.size) return `key material at ${hex(offset)}+${hex(need)} lies beyond the end of the volume (size ${hex(volume.size)}): truncated`;
  if (header.payloadOffset > 0 && offset < header.payloadOffset && offset + need > header.payloadOffset) {
    return `key material at ${hex(offset)}+${hex(need)} overlaps the encrypted data at ${hex(header.payloadOffset)}`;
  }
  if (!HASHES.includes(slot.afHash)) return `AF hash '${slot.afHash}' is not supported (${HASHES.join(', ')} are)`;
  try {
    checkCipher(slot.areaCipher, slot.areaKeySize);
  } catch (e) {
    return (e as Error).message;
  }
  const digest = digestFor(slot, header);
  if (!digest) return 'no digest checks its key';
  return kdfCostProblem(slot.kdf) ?? kdfCostProblem({ type: 'pbkdf2', hash: digest.hash, iterations: digest.iterations, salt: digest.salt }) ?? kdfUnavailable(slot.kdf);
}

function digestFor(slot: Keyslot, header: LuksHeader): KeyDigest | undefined {
  return header.digests.find((d) => d.keyslots.includes(slot.id));
}

/** The candidate volume key held in `slot` under `passphrase`; zeroed and undefined when wrong. */
async function trySlot(volume: Volume, header: LuksHeader, slot: Keyslot, passphrase: Buffer): Promise<Buffer | undefined> {
  const need = Math.ceil((slot.keySize * slot.stripes) / AREA_SECTOR) * AREA_SECTOR;
  const material = await volume.readAt(slot.area.offset, need);
  const slotKey = await deriveKey(passphrase, slot.kdf, slot.areaKeySize);
  const cipher = sectorCipher(slot.areaCipher, slotKey, AREA_SECTOR);
  slotKey.fill(0);
  cipher.decrypt(material, 0);
  cipher.wipe();
  const candidate = afMerge(material, slot.keySize, slot.stripes, slot.afHash);
  material.fill(0);
  const digest = digestFor(slot, header)!;
  const check = await pbkdf2Async(candidate, digest.salt, digest.iterations, digest.digest.length, digest.hash);
  const right = check.length === digest.digest.length && timingSafeEqual(check, digest.digest);
  check.fill(0);
  if (right) return candidate;
  candidate.fill(0);
  return undefined;
}

export interface Unlocked {
  volumeKey: Buffer;
  keyslot: string;
  /** Slots that could not be tried (and why), for a warning. */
  skipped: string[];
}

/**
 * Find the volume key with one of `keys`, or throw a FatalError naming the device (never a key).
 * `trace` gets one line per slot tried.
 */
export async function unlockVolumeKey(volume: Volume, header: LuksHeader, keys: readonly Buffer[], trace: (m: string) => void): Promise<Unlocked> {
  const device = volume.name;
  const what = `${device} (LUKS${header.version} UUID ${header.uuid || 'none'})`;
  try {
    checkCipher(header.cipher, header.keySize);
  } catch (e) {
    throw new FatalError(`${what}: ${(e as Error).message}`);
  }
  const skipped: string[] = [];
  const usable: Keyslot[] = [];
  const ordered = header.keyslots.filter((k) => k.priority > 0).sort((a, b) => b.priority - a.priority);
  for (const slot of ordered) {
    const problem = slotProblem(slot, header, volume);
    if (problem) skipped.push(`keyslot ${slot.id}: ${problem}`);
    else usable.push(slot);
  }
  if (usable.length === 0) {
    const why = skipped.length ? skipped.join('; ') : 'it has no active keyslot';
    throw new FatalError(`${what}: cannot be opened: ${why}`);
  }
  for (const [i, key] of keys.entries()) {
    for (const slot of usable) {
      const kdf = slot.kdf.type === 'pbkdf2' ? `pbkdf2-${slot.kdf.hash}, ${slot.kdf.iterations} iterations` : `${slot.kdf.type}, ${slot.kdf.memoryKiB} KiB, ${slot.kdf.time} passes`;
      trace(`${device}: trying key ${i + 1} of ${keys.length} on keyslot ${slot.id} (${kdf})`);
      const volumeKey = await trySlot(volume, header, slot, key);
      if (volumeKey) return { volumeKey, keyslot: slot.id, skipped };
    }
  }
  const also = skipped.length ? ` (not tried: ${skipped.join('; ')})` : '';
  const n = keys.length === 1 ? 'the key given opens no keyslot' : `none of the ${keys.length} keys given opens a keyslot`;
  throw new FatalError(`${what}: ${n}: wrong key?${also}`);
}
