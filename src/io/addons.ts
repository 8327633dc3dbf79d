/**
 * The native addons that only some features need, loaded when a feature first asks for one. They
 * are optional dependencies compiled at install time (a C++ compiler is needed: better-sqlite3 and
 * zstd-napi download no binary from the registry, and argon2's bundled one crashes Node 20), so a
 * machine without a compiler installs sparsify without them: raw, zlib qcow2 and every other
 * format still work, and only the feature that needs a missing addon stops, with an error naming
 * the feature and the package.
 */
import { createRequire } from 'node:module';
import { FatalError } from './errors.js';

/**
 * An optional addon a feature needs is not installed, or cannot be loaded here. Fatal: it is not
 * about the image, so no reader takes it for damage and keeps a volume whole instead. Exit code 1.
 */
export class MissingAddonError extends FatalError {
  constructor(
    readonly feature: string,
    readonly packageName: string,
    cause: string,
  ) {
    super(
      `${feature} needs the optional package ${packageName}, which ${cause}. npm compiles it when it installs ` +
        `sparsify, given python3, make and g++: install those, then install sparsify again without --omit=optional`,
    );
    this.name = 'MissingAddonError';
  }
}

type ZstdBinding = typeof import('zstd-napi/binding.js');
type SqliteConstructor = typeof import('better-sqlite3');
type Argon2 = typeof import('argon2');

const require = createRequire(import.meta.url);
const loaded = new Map<string, unknown>();

/** `probe` touches the compiled part where requiring the package alone would not. */
function load<T>(specifier: string, packageName: string, feature: string, probe?: (mod: T) => void): T {
  if (loaded.has(specifier)) return loaded.get(specifier) as T;
  let mod: T;
  try {
    mod = require(specifier) as T;
    probe?.(mod);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    // Not installed at all, or installed without its compiled binding (its build failed, or was for another Node).
    const notInstalled = err.code === 'MODULE_NOT_FOUND' && err.message.includes(`'${specifier}'`);
    throw new MissingAddonError(feature, packageName, notInstalled ? 'is not installed' : `is installed but cannot be loaded (${err.message.split('\n')[0]})`);
  }
  loaded.set(specifier, mod);
  return mod;
}

/** zstd-napi's binding: zstd-compressed qcow2 clusters (reading them, and writing them with compression_type=zstd). */
export function zstdAddon(): ZstdBinding {
  return load<ZstdBinding>('zstd-napi/binding.js', 'zstd-napi', 'Reading or writing zstd-compressed qcow2');
}

/** argon2: the key derivation of LUKS2 keyslots made with argon2i or argon2id (cryptsetup's default). */
export function argon2Addon(): Argon2 {
  return load<Argon2>('argon2', 'argon2', 'Opening a LUKS2 keyslot that uses Argon2 key derivation');
}

/** better-sqlite3: the service's embedded store (sparsify serve without --database). */
export function sqliteAddon(): SqliteConstructor {
  // The package loads its binding only when a database is opened: open one in memory to know now.
  return load<SqliteConstructor>('better-sqlite3', 'better-sqlite3', "The service's embedded SQLite store (sparsify serve without --database postgres://...)", (Database) =>
    new Database(':memory:').close(),
  );
}
