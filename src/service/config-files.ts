/**
 * The files the service reads its configuration from, and why each one was chosen:
 * - the JSON config file: --config FILE, else SPARSIFY_CONFIG, else CONFIG_DIR/config.json, else
 *   DATA_DIR/config.json (the first that is given or exists; only one is read);
 * - the LUKS keys file: --keys-file (any layer), else CONFIG_DIR/luks-keys, else DATA_DIR/luks-keys.
 * CONFIG_DIR is /etc/sparsify (SPARSIFY_CONFIG_DIR moves it, for tests and unusual layouts).
 * These files may hold the API token, the database URL with its password, or LUKS keys, so each
 * must be a regular file that only its owner can read, mode 0600, as the LUKS keys file must.
 */
import { existsSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const DEFAULT_CONFIG_DIR = '/etc/sparsify';
export const CONFIG_FILE_NAME = 'config.json';
export const KEYS_FILE_NAME = 'luks-keys';

/** A setting or a configuration file that cannot be used: the message names it and says why. */
export class ConfigError extends Error {}

export function configDirOf(env: NodeJS.ProcessEnv): string {
  return resolve(env.SPARSIFY_CONFIG_DIR || DEFAULT_CONFIG_DIR);
}

/** A file that holds settings or secrets: a regular file of mode 0600, or an error saying how to fix it. */
export function checkPrivateFile(path: string, what: string): void {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    throw new ConfigError(`${what} ${path}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (!st.isFile()) throw new ConfigError(`${what} ${path}: not a regular file`);
  const mode = st.mode & 0o777;
  if (mode !== 0o600) {
    throw new ConfigError(`${what} ${path} has mode 0${mode.toString(8)}: it may hold the token, the database password or keys, and must be mode 0600 (chmod 600 ${path})`);
  }
}

export interface FileChoice {
  /** The file chosen; undefined: none. */
  path?: string;
  /** Why this one (or why none), for --check-config. */
  why: string;
}

/** The one JSON config file to read, in order: --config, SPARSIFY_CONFIG, CONFIG_DIR/config.json, DATA_DIR/config.json. */
export function chooseConfigFile(flag: string | undefined, env: NodeJS.ProcessEnv, dataDir: string): FileChoice {
  if (flag) return { path: resolve(flag), why: 'given with --config' };
  if (env.SPARSIFY_CONFIG) return { path: resolve(env.SPARSIFY_CONFIG), why: 'named by SPARSIFY_CONFIG' };
  const inConfigDir = join(configDirOf(env), CONFIG_FILE_NAME);
  if (existsSync(inConfigDir)) return { path: inConfigDir, why: `found in the configuration folder (no --config, SPARSIFY_CONFIG not set)` };
  const inDataDir = join(dataDir, CONFIG_FILE_NAME);
  if (existsSync(inDataDir)) return { path: inDataDir, why: `found in the data folder (no --config, SPARSIFY_CONFIG not set, no ${inConfigDir})` };
  return { why: `none: no --config, SPARSIFY_CONFIG not set, no ${inConfigDir}, no ${inDataDir}` };
}

/** The LUKS keys file when none was configured: CONFIG_DIR/luks-keys, else DATA_DIR/luks-keys, when it exists. */
export function defaultKeysFile(env: NodeJS.ProcessEnv, dataDir: string): FileChoice {
  const inConfigDir = join(configDirOf(env), KEYS_FILE_NAME);
  if (existsSync(inConfigDir)) return { path: inConfigDir, why: 'found in the configuration folder' };
  const inDataDir = join(dataDir, KEYS_FILE_NAME);
  if (existsSync(inDataDir)) return { path: inDataDir, why: 'found in the data folder' };
  return { why: `none: no --keys-file, no ${inConfigDir}, no ${inDataDir} (encrypted volumes are kept whole)` };
}
