/**
 * Service configuration: defaults, then a JSON config file, then environment, then flags (the
 * later wins). Bound to localhost unless told otherwise; one default domain under the data folder.
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { homedir } from 'node:os';

export type SparsifyMode = 'in-place' | 'copy-and-replace';
export const MODES: readonly SparsifyMode[] = ['in-place', 'copy-and-replace'];

export interface PolicyConfig {
  /** A disk "needs sparsify" when it could give back at least this many bytes... */
  thresholdBytes: number;
  /** ...and at least this percentage of its actual size. */
  thresholdPercent: number;
  /** Sparsify disks that need it, when they are not in use. Off by default. */
  scheduleEnabled: boolean;
  scheduleIntervalSeconds: number;
}

export interface ServiceConfig {
  dataDir: string;
  /** Storage domains: folders of images (empty until loadConfig fills in the default). */
  domains: string[];
  host: string;
  port: number;
  /** Token for mutating calls; generated and kept in the data folder when absent. */
  token?: string;
  /** Jobs run at once. */
  concurrency: number;
  /** Periodic rescan of the domains (0: only on demand and after jobs). */
  scanIntervalSeconds: number;
  defaultMode: SparsifyMode;
  /** A job found running at startup (the server died under it): rerun it, or fail it cleanly. */
  onRestart: 'rerun' | 'fail';
  /** Reruns allowed per job before it is failed. */
  maxAttempts: number;
  policy: PolicyConfig;
  /** Tests only: pause this long (abortable) before the engine runs, so a test can cancel or kill mid-job. */
  testJobDelayMs: number;
}

export function defaultConfig(dataDir?: string): ServiceConfig {
  const dir = resolve(dataDir ?? join(homedir(), '.local', 'share', 'sparsify'));
  return {
    dataDir: dir,
    domains: [],
    host: '127.0.0.1',
    port: 8080,
    concurrency: 1,
    scanIntervalSeconds: 60,
    defaultMode: 'in-place',
    onRestart: 'rerun',
    maxAttempts: 3,
    policy: { thresholdBytes: 1 << 30, thresholdPercent: 10, scheduleEnabled: false, scheduleIntervalSeconds: 3600 },
    testJobDelayMs: 0,
  };
}

export class ConfigError extends Error {}

export interface ConfigSources {
  /** Flags already parsed. */
  flags: { dataDir?: string; domain?: string[]; host?: string; port?: string; token?: string; config?: string };
  env: NodeJS.ProcessEnv;
}

function int(name: string, v: unknown, min: number, max: number): number {
  const n = typeof v === 'string' && /^\s*-?\d+\s*$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) throw new ConfigError(`${name}: expected an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return n;
}

function bool(name: string, v: unknown): boolean {
  if (typeof v === 'boolean') return v;
  if (v === 'true' || v === '1' || v === 'yes') return true;
  if (v === 'false' || v === '0' || v === 'no') return false;
  throw new ConfigError(`${name}: expected true or false, got ${JSON.stringify(v)}`);
}

function mode(name: string, v: unknown): SparsifyMode {
  if (!MODES.includes(v as SparsifyMode)) throw new ConfigError(`${name}: expected one of ${MODES.join(', ')}`);
  return v as SparsifyMode;
}

/** Apply a plain object of settings (config file or environment) over `c`. Unknown keys are errors. */
function apply(c: ServiceConfig, o: Record<string, unknown>, where: string): void {
  for (const [k, v] of Object.entries(o)) {
    if (v === undefined) continue;
    const name = `${where}: ${k}`;
    switch (k) {
      case 'dataDir':
        c.dataDir = resolve(String(v));
        break;
      case 'domains':
        if (!Array.isArray(v) || v.some((d) => typeof d !== 'string' || !d)) throw new ConfigError(`${name}: expected a list of folders`);
        c.domains = v.map((d) => resolve(d as string));
        break;
      case 'host':
        c.host = String(v);
        break;
      case 'port':
        c.port = int(name, v, 0, 65535);
        break;
      case 'token':
        if (typeof v !== 'string' || v.length < 8) throw new ConfigError(`${name}: a token has at least 8 characters`);
        c.token = v;
        break;
      case 'concurrency':
        c.concurrency = int(name, v, 1, 64);
        break;
      case 'scanIntervalSeconds':
        c.scanIntervalSeconds = int(name, v, 0, 86400 * 7);
        break;
      case 'defaultMode':
        c.defaultMode = mode(name, v);
        break;
      case 'onRestart':
        if (v !== 'rerun' && v !== 'fail') throw new ConfigError(`${name}: expected rerun or fail`);
        c.onRestart = v;
        break;
      case 'maxAttempts':
        c.maxAttempts = int(name, v, 1, 100);
        break;
      case 'testJobDelayMs':
        c.testJobDelayMs = int(name, v, 0, 600_000);
        break;
      case 'thresholdBytes':
        c.policy.thresholdBytes = int(name, v, 0, Number.MAX_SAFE_INTEGER);
        break;
      case 'thresholdPercent':
        c.policy.thresholdPercent = int(name, v, 0, 100);
        break;
      case 'scheduleEnabled':
        c.policy.scheduleEnabled = bool(name, v);
        break;
      case 'scheduleIntervalSeconds':
        c.policy.scheduleIntervalSeconds = int(name, v, 1, 86400 * 30);
        break;
      default:
        throw new ConfigError(`${where}: unknown setting '${k}'`);
    }
  }
}

const ENV: Record<string, string> = {
  SPARSIFY_DATA_DIR: 'dataDir',
  SPARSIFY_HOST: 'host',
  SPARSIFY_PORT: 'port',
  SPARSIFY_TOKEN: 'token',
  SPARSIFY_CONCURRENCY: 'concurrency',
  SPARSIFY_SCAN_INTERVAL: 'scanIntervalSeconds',
  SPARSIFY_DEFAULT_MODE: 'defaultMode',
  SPARSIFY_ON_RESTART: 'onRestart',
  SPARSIFY_THRESHOLD_BYTES: 'thresholdBytes',
  SPARSIFY_THRESHOLD_PERCENT: 'thresholdPercent',
  SPARSIFY_SCHEDULE: 'scheduleEnabled',
  SPARSIFY_SCHEDULE_INTERVAL: 'scheduleIntervalSeconds',
  SPARSIFY_TEST_JOB_DELAY_MS: 'testJobDelayMs',
};

export function loadConfig(src: ConfigSources): ServiceConfig {
  const dataDir = src.flags.dataDir ?? src.env.SPARSIFY_DATA_DIR;
  const c = defaultConfig(dataDir);
  const file = src.flags.config ?? src.env.SPARSIFY_CONFIG;
  if (file) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(file, 'utf8'));
    } catch (e) {
      throw new ConfigError(`config file ${file}: ${(e as Error).message}`);
    }
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new ConfigError(`config file ${file}: expected a JSON object`);
    apply(c, parsed as Record<string, unknown>, `config file ${file}`);
  }
  const fromEnv: Record<string, unknown> = {};
  for (const [k, key] of Object.entries(ENV)) if (src.env[k] !== undefined && src.env[k] !== '') fromEnv[key] = src.env[k];
  if (src.env.SPARSIFY_DOMAINS) fromEnv.domains = src.env.SPARSIFY_DOMAINS.split(':').filter(Boolean);
  apply(c, fromEnv, 'environment');
  const f = src.flags;
  apply(c, { dataDir: f.dataDir, host: f.host, port: f.port, token: f.token, domains: f.domain?.length ? f.domain : undefined }, 'flag');
  // No domain given anywhere: one under the data folder, so it works out of the box.
  if (!c.domains.length) c.domains = [join(c.dataDir, 'images')];
  return c;
}
