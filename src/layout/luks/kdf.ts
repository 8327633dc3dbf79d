/**
 * Key derivation for keyslots and digests: PBKDF2 (node's crypto) and Argon2i/Argon2id (the
 * optional argon2 package, loaded when an Argon2 keyslot is tried). The cost a header asks for is
 * checked against fixed caps BEFORE deriving: a damaged or hostile header asking for terabytes of
 * memory or billions of iterations gets a quick, clear error instead of hanging the process or
 * exhausting memory.
 */
import { pbkdf2 } from 'node:crypto';
import { promisify } from 'node:util';
import { SparsifyError } from '../../io/errors.js';
import { argon2Addon, MissingAddonError } from '../../io/addons.js';
import type { Kdf } from './model.js';

const pbkdf2Async = promisify(pbkdf2);

/** Hashes accepted for PBKDF2 and the AF splitter (what cryptsetup uses on real volumes). */
export const HASHES = ['sha1', 'sha256', 'sha512'];

/**
 * cryptsetup's benchmark gives a few million PBKDF2 iterations for 2 s on a fast CPU; 100 million
 * is about a minute of work here and far beyond any real header.
 */
export const MAX_PBKDF2_ITERATIONS = 100_000_000;
/** cryptsetup itself refuses Argon2 memory above 4 GiB. */
export const MAX_ARGON2_MEMORY_KIB = 4 * 1024 * 1024;
/** Passes times memory: 64 GiB of memory traffic is about a minute here. */
export const MAX_ARGON2_WORK_KIB = 64 * 1024 * 1024;
export const MAX_ARGON2_CPUS = 64;

function humanKiB(kib: number): string {
  if (kib >= 1024 * 1024 * 1024) return `${(kib / (1024 * 1024 * 1024)).toFixed(1)} TiB`;
  if (kib >= 1024 * 1024) return `${(kib / (1024 * 1024)).toFixed(1)} GiB`;
  return `${Math.round(kib / 1024)} MiB`;
}

/** Why this machine cannot derive with `kdf` (Argon2 without its optional addon), or undefined. */
export function kdfUnavailable(kdf: Kdf): string | undefined {
  if (kdf.type === 'pbkdf2') return undefined;
  try {
    argon2Addon();
    return undefined;
  } catch (e) {
    if (e instanceof MissingAddonError) return e.message;
    throw e;
  }
}

/** Undefined when the cost is within the caps; otherwise why it is refused. */
export function kdfCostProblem(kdf: Kdf): string | undefined {
  if (kdf.type === 'pbkdf2') {
    if (!HASHES.includes(kdf.hash)) return `PBKDF2 hash '${kdf.hash}' is not supported (${HASHES.join(', ')} are)`;
    if (kdf.iterations < 1) return 'PBKDF2 iteration count is 0';
    if (kdf.iterations > MAX_PBKDF2_ITERATIONS) {
      return `PBKDF2 iteration count ${kdf.iterations} exceeds the limit of ${MAX_PBKDF2_ITERATIONS} (real headers use a few million at most); refusing to derive`;
    }
    return undefined;
  }
  if (kdf.memoryKiB > MAX_ARGON2_MEMORY_KIB) {
    return `${kdf.type} memory cost ${humanKiB(kdf.memoryKiB)} exceeds the ${humanKiB(MAX_ARGON2_MEMORY_KIB)} cryptsetup allows; refusing to derive`;
  }
  if (kdf.cpus < 1 || kdf.cpus > MAX_ARGON2_CPUS) return `${kdf.type} parallelism ${kdf.cpus} is outside 1..${MAX_ARGON2_CPUS}`;
  if (kdf.memoryKiB < 8 * kdf.cpus) return `${kdf.type} memory cost ${kdf.memoryKiB} KiB is below the minimum of 8 KiB per thread`;
  if (kdf.time < 1) return `${kdf.type} time cost is 0`;
  if (kdf.time * kdf.memoryKiB > MAX_ARGON2_WORK_KIB) {
    return `${kdf.type} cost (${kdf.time} passes over ${humanKiB(kdf.memoryKiB)}) exceeds the limit of ${humanKiB(MAX_ARGON2_WORK_KIB)} of work; refusing to derive`;
  }
  return undefined;
}

/** Derive `length` bytes from `secret`. The caller checks `kdfCostProblem` first and zeroes the result. */
export async function deriveKey(secret: Buffer, kdf: Kdf, length: number): Promise<Buffer> {
  const problem = kdfCostProblem(kdf);
  if (problem) throw new SparsifyError(problem);
  if (kdf.type === 'pbkdf2') return pbkdf2Async(secret, kdf.salt, kdf.iterations, length, kdf.hash);
  const argon2 = argon2Addon();
  return argon2.hash(secret, {
    raw: true,
    type: kdf.type === 'argon2i' ? argon2.argon2i : argon2.argon2id,
    salt: kdf.salt,
    timeCost: kdf.time,
    memoryCost: kdf.memoryKiB,
    parallelism: kdf.cpus,
    hashLength: length,
  });
}
