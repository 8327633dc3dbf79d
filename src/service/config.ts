/**
 * Service settings in one table: each row gives the config-file key, the flag, the environment
 * variable, the default and the help line, so `--help`, the manual page, the config file and the
 * environment cannot drift apart. Layers: defaults < config file < environment < flags, and each
 * value remembers which layer gave it (`sparsify serve --check-config` shows it). Bound to
 * localhost and SQLite unless told otherwise; one default domain under the data folder.
 */
import { existsSync, readFileSync } from 'node:fs';
import { hostname, homedir } from 'node:os';
import { join, resolve } from 'node:path';
import type { SparsifyMode } from './store/records.js';
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from './logging.js';
import { ConfigError, checkPrivateFile, chooseConfigFile, defaultKeysFile, type FileChoice } from './config-files.js';

export { ConfigError } from './config-files.js';

export type { SparsifyMode } from './store/records.js';
export const MODES: readonly SparsifyMode[] = ['in-place', 'copy-and-replace'];

export interface PolicyConfig {
  /** A disk "needs sparsify" when it could give back at least this many bytes... */
  thresholdBytes: number;
  /** ...and at least this percentage of its actual size. */
  thresholdPercent: number;
  /** Sparsify disks that need it, when they are not in use. Off by default. */
  scheduleEnabled: boolean;
  scheduleIntervalSeconds: number;
  /** The schedule also trims these running VMs (UUIDs) through their guest agents; absent: none. */
  trimVms?: string[];
  /** ...and the running VMs with a disk in these storage domains (ids); absent: none. */
  trimDomains?: string[];
  /** One trim at a time on each host (default true). */
  trimOneAtATime?: boolean;
}

export interface ServiceConfig {
  dataDir: string;
  /** Storage domains: folders of images on this host. */
  domains: string[];
  host: string;
  port: number;
  /** Token for mutating calls; generated and kept in the data folder when absent. */
  token?: string;
  /** A read-only token for /metrics (Prometheus scrapers), besides the service token. */
  metricsToken?: string;
  /** HTTPS: certificate and key files (PEM); both or neither. */
  tlsCert?: string;
  tlsKey?: string;
  /** postgres://... for a cluster; absent: SQLite in the data folder. Never printed. */
  database?: string;
  /** This host's name in the cluster. */
  hostName: string;
  /** Jobs this host runs at once. */
  concurrency: number;
  /** A host silent this long is non-responsive and its jobs are taken over. */
  hostTimeoutSeconds: number;
  /** A queued job that no up host can run (its domain reachable nowhere) fails after this (0: never). */
  orphanTimeoutSeconds: number;
  /** Periodic rescan of the domains (0: only on demand and after jobs). */
  scanIntervalSeconds: number;
  defaultMode: SparsifyMode;
  /** A job found running at startup (this host died under it): rerun it, or fail it cleanly. */
  onRestart: 'rerun' | 'fail';
  /** Attempts allowed per job (restarts and takeovers) before it is failed. */
  maxAttempts: number;
  policy: PolicyConfig;
  logLevel: LogLevel;
  /** JSON lines (for machines) or short pretty lines (for people); undefined: pretty only when stderr is a terminal. */
  logFormat?: LogFormat;
  /** On SIGTERM, running jobs get this long to hand themselves back before the process exits anyway. */
  shutdownTimeoutSeconds: number;
  /** LUKS keys by volume UUID (mode 0600); absent: CONFIG_DIR/luks-keys, else DATA_DIR/luks-keys, when it exists. */
  keysFile?: string;
  /** libvirt connection to read VMs from; undefined: none (see LIBVIRT_SOCKET). */
  libvirt?: string;
  /** Re-read the VMs this often (0: only on demand and before each sparsify request). */
  libvirtIntervalSeconds: number;
  /** Seconds a guest agent gets to answer guest-ping (trim's precondition). */
  agentPingTimeoutSeconds?: number;
  /** Seconds a guest gets to finish guest-fstrim before the trim job fails. */
  agentTrimTimeoutSeconds?: number;
  /** Tests only: pause this long (abortable) before the engine runs, so a test can cancel or kill mid-job. */
  testJobDelayMs: number;
}

type Kind =
  | { t: 'path' }
  | { t: 'paths' }
  | { t: 'string'; min?: number; pattern?: RegExp; what?: string }
  | { t: 'int'; min: number; max: number }
  | { t: 'bool' }
  | { t: 'enum'; values: readonly string[] };

export interface Setting {
  /** Config-file key, and the field it sets. */
  key: string;
  /** Long flag without dashes; absent: no flag. */
  flag?: string;
  /** Placeholder in --help. */
  arg?: string;
  env?: string;
  kind: Kind;
  help: string;
  /** Shown in --help. */
  defaultText?: string;
  /** Not in --help or the README (tests only). */
  hidden?: boolean;
  set(c: ServiceConfig, v: unknown): void;
}

const field = <K extends keyof ServiceConfig>(k: K) => (c: ServiceConfig, v: unknown) => {
  c[k] = v as ServiceConfig[K];
};
const policy = <K extends keyof PolicyConfig>(k: K) => (c: ServiceConfig, v: unknown) => {
  c.policy[k] = v as PolicyConfig[K];
};

export const SETTINGS: readonly Setting[] = [
  { key: 'dataDir', flag: 'data-dir', arg: 'dir', env: 'SPARSIFY_DATA_DIR', kind: { t: 'path' }, help: 'folder for the SQLite database, the token and the default domain', defaultText: '~/.local/share/sparsify', set: field('dataDir') },
  { key: 'domains', flag: 'domain', arg: 'dir', env: 'SPARSIFY_DOMAINS', kind: { t: 'paths' }, help: 'a storage domain: a folder of images (repeatable; env: colon-separated)', defaultText: 'DATA_DIR/images', set: field('domains') },
  { key: 'host', flag: 'host', arg: 'addr', env: 'SPARSIFY_HOST', kind: { t: 'string', min: 1 }, help: 'address to listen on', defaultText: '127.0.0.1: localhost only', set: field('host') },
  { key: 'port', flag: 'port', arg: 'n', env: 'SPARSIFY_PORT', kind: { t: 'int', min: 0, max: 65535 }, help: 'port (0: any free port)', defaultText: '8080', set: field('port') },
  { key: 'token', flag: 'token', arg: 'secret', env: 'SPARSIFY_TOKEN', kind: { t: 'string', min: 8, what: 'a token has at least 8 characters' }, help: 'token for calls that change anything', defaultText: 'generated at first start, kept in DATA_DIR/token', set: field('token') },
  { key: 'metricsToken', flag: 'metrics-token', arg: 'secret', env: 'SPARSIFY_METRICS_TOKEN', kind: { t: 'string', min: 8, what: 'a token has at least 8 characters' }, help: 'read-only token that /metrics also accepts (for Prometheus)', defaultText: 'none: /metrics takes the service token', set: field('metricsToken') },
  { key: 'tlsCert', flag: 'tls-cert', arg: 'file', env: 'SPARSIFY_TLS_CERT', kind: { t: 'path' }, help: 'serve HTTPS with this certificate (PEM; with --tls-key)', defaultText: 'HTTP', set: field('tlsCert') },
  { key: 'tlsKey', flag: 'tls-key', arg: 'file', env: 'SPARSIFY_TLS_KEY', kind: { t: 'path' }, help: 'the private key of --tls-cert (PEM)', defaultText: 'HTTP', set: field('tlsKey') },
  { key: 'database', flag: 'database', arg: 'url', env: 'SPARSIFY_DATABASE_URL', kind: { t: 'string', pattern: /^postgres(ql)?:\/\//, what: 'expected a postgres:// or postgresql:// URL' }, help: 'PostgreSQL shared by the hosts of a cluster (never printed)', defaultText: 'SQLite in the data folder', set: field('database') },
  { key: 'hostName', flag: 'host-name', arg: 'name', env: 'SPARSIFY_HOST_NAME', kind: { t: 'string', min: 1, pattern: /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, what: 'letters, digits, dot, dash and underscore, up to 63' }, help: "this host's name in the cluster", defaultText: "the machine's hostname", set: field('hostName') },
  { key: 'concurrency', flag: 'concurrency', arg: 'n', env: 'SPARSIFY_CONCURRENCY', kind: { t: 'int', min: 1, max: 64 }, help: 'jobs this host runs at once', defaultText: '1', set: field('concurrency') },
  { key: 'hostTimeoutSeconds', flag: 'host-timeout', arg: 's', env: 'SPARSIFY_HOST_TIMEOUT', kind: { t: 'int', min: 3, max: 3600 }, help: 'a host that misses heartbeats this long is non-responsive; its jobs are taken over', defaultText: '30', set: field('hostTimeoutSeconds') },
  { key: 'orphanTimeoutSeconds', flag: 'orphan-timeout', arg: 's', env: 'SPARSIFY_ORPHAN_TIMEOUT', kind: { t: 'int', min: 0, max: 86400 * 7 }, help: 'a queued job no up host can run fails after this, unlocking its disk (0: never)', defaultText: '600', set: field('orphanTimeoutSeconds') },
  { key: 'scanIntervalSeconds', flag: 'scan-interval', arg: 's', env: 'SPARSIFY_SCAN_INTERVAL', kind: { t: 'int', min: 0, max: 86400 * 7 }, help: 'rescan the domains this often (0: on demand and after jobs)', defaultText: '60', set: field('scanIntervalSeconds') },
  { key: 'defaultMode', flag: 'default-mode', arg: 'mode', env: 'SPARSIFY_DEFAULT_MODE', kind: { t: 'enum', values: MODES }, help: 'mode of a sparsify request that names none', defaultText: 'in-place', set: field('defaultMode') },
  { key: 'onRestart', flag: 'on-restart', arg: 'what', env: 'SPARSIFY_ON_RESTART', kind: { t: 'enum', values: ['rerun', 'fail'] }, help: 'a job this host was running when it died: rerun it or fail it', defaultText: 'rerun', set: field('onRestart') },
  { key: 'maxAttempts', flag: 'max-attempts', arg: 'n', env: 'SPARSIFY_MAX_ATTEMPTS', kind: { t: 'int', min: 1, max: 100 }, help: 'attempts per job (restarts and takeovers) before it fails', defaultText: '3', set: field('maxAttempts') },
  { key: 'logLevel', flag: 'log-level', arg: 'level', env: 'SPARSIFY_LOG_LEVEL', kind: { t: 'enum', values: LOG_LEVELS }, help: `how much to log on stderr (${LOG_LEVELS.join(', ')})`, defaultText: 'info', set: field('logLevel') },
  { key: 'logFormat', flag: 'log-format', arg: 'format', env: 'SPARSIFY_LOG_FORMAT', kind: { t: 'enum', values: LOG_FORMATS }, help: 'log lines as JSON, one object per line (for machines), or pretty and short (for people)', defaultText: 'pretty when stderr is a terminal, else json', set: field('logFormat') },
  { key: 'shutdownTimeoutSeconds', flag: 'shutdown-timeout', arg: 's', env: 'SPARSIFY_SHUTDOWN_TIMEOUT', kind: { t: 'int', min: 1, max: 3600 }, help: 'on SIGTERM, running jobs get this long to hand themselves back (they run again elsewhere or after the restart)', defaultText: '10', set: field('shutdownTimeoutSeconds') },
  { key: 'thresholdBytes', flag: 'threshold-bytes', arg: 'n', env: 'SPARSIFY_THRESHOLD_BYTES', kind: { t: 'int', min: 0, max: Number.MAX_SAFE_INTEGER }, help: 'a disk needs sparsify when it can give back at least this many bytes...', defaultText: '1 GiB', set: policy('thresholdBytes') },
  { key: 'thresholdPercent', flag: 'threshold-percent', arg: 'n', env: 'SPARSIFY_THRESHOLD_PERCENT', kind: { t: 'int', min: 0, max: 100 }, help: '...and at least this percentage of its actual size', defaultText: '10', set: policy('thresholdPercent') },
  { key: 'scheduleEnabled', flag: 'schedule', arg: 'bool', env: 'SPARSIFY_SCHEDULE', kind: { t: 'bool' }, help: 'sparsify the disks that need it periodically (once per interval for the whole cluster)', defaultText: 'false', set: policy('scheduleEnabled') },
  { key: 'scheduleIntervalSeconds', flag: 'schedule-interval', arg: 's', env: 'SPARSIFY_SCHEDULE_INTERVAL', kind: { t: 'int', min: 1, max: 86400 * 30 }, help: 'how often the schedule runs', defaultText: '3600', set: policy('scheduleIntervalSeconds') },
  { key: 'keysFile', flag: 'keys-file', arg: 'file', env: 'SPARSIFY_KEYS_FILE', kind: { t: 'path' }, help: 'LUKS keys by volume UUID, JSON {"UUID": "passphrase"} or UUID:key:... lines; must be mode 0600', defaultText: '/etc/sparsify/luks-keys, else DATA_DIR/luks-keys, when it exists', set: field('keysFile') },
  { key: 'libvirt', flag: 'libvirt', arg: 'uri', env: 'SPARSIFY_LIBVIRT', kind: { t: 'string', min: 1, pattern: /^(none|[a-z][a-z0-9+.-]*:\/\/\S*)$/, what: 'a libvirt URI (qemu:///system) or none' }, help: 'libvirt connection whose VMs this host reads (virsh): a disk a VM uses is sparsified only while that VM is down (none: no VMs)', defaultText: 'qemu:///system when /run/libvirt/libvirt-sock exists, else none', set: field('libvirt') },
  { key: 'libvirtIntervalSeconds', flag: 'libvirt-interval', arg: 's', env: 'SPARSIFY_LIBVIRT_INTERVAL', kind: { t: 'int', min: 0, max: 86400 }, help: 'read the VMs again this often (0: on demand and before each sparsify request)', defaultText: '10', set: field('libvirtIntervalSeconds') },
  { key: 'agentPingTimeoutSeconds', flag: 'agent-ping-timeout', arg: 's', env: 'SPARSIFY_AGENT_PING_TIMEOUT', kind: { t: 'int', min: 1, max: 600 }, help: "a running VM is trimmed only when its guest agent answers guest-ping within this", defaultText: '5', set: field('agentPingTimeoutSeconds') },
  { key: 'agentTrimTimeoutSeconds', flag: 'agent-trim-timeout', arg: 's', env: 'SPARSIFY_AGENT_TRIM_TIMEOUT', kind: { t: 'int', min: 1, max: 86400 }, help: "a trim job fails when the guest has not finished guest-fstrim within this (the guest keeps running)", defaultText: '300', set: field('agentTrimTimeoutSeconds') },
  { key: 'testJobDelayMs', env: 'SPARSIFY_TEST_JOB_DELAY_MS', kind: { t: 'int', min: 0, max: 600_000 }, help: 'tests: pause before the engine runs', hidden: true, set: field('testJobDelayMs') },
];

export function defaultConfig(dataDir?: string): ServiceConfig {
  return {
    dataDir: resolve(dataDir ?? join(homedir(), '.local', 'share', 'sparsify')),
    domains: [],
    host: '127.0.0.1',
    port: 8080,
    hostName: hostname().split('.')[0] || 'localhost',
    concurrency: 1,
    hostTimeoutSeconds: 30,
    orphanTimeoutSeconds: 600,
    scanIntervalSeconds: 60,
    defaultMode: 'in-place',
    onRestart: 'rerun',
    maxAttempts: 3,
    shutdownTimeoutSeconds: 10,
    logLevel: 'info',
    policy: { thresholdBytes: 1 << 30, thresholdPercent: 10, scheduleEnabled: false, scheduleIntervalSeconds: 3600 },
    libvirtIntervalSeconds: 10,
    testJobDelayMs: 0,
  };
}

/** libvirtd's socket: where it exists, the host has a libvirt whose VMs it should know by default. */
export const LIBVIRT_SOCKET = '/run/libvirt/libvirt-sock';

/** Check and convert one value; `name` says where it came from. Never echoes a secret. */
function convert(s: Setting, v: unknown, name: string): unknown {
  const k = s.kind;
  const secret = s.key === 'token' || s.key === 'database' || s.key === 'metricsToken';
  const shown = secret ? '(hidden)' : JSON.stringify(v);
  switch (k.t) {
    case 'path':
      if (typeof v !== 'string' || !v) throw new ConfigError(`${name}: expected a folder`);
      return resolve(v);
    case 'paths':
      if (typeof v === 'string') v = v.split(':').filter(Boolean);
      if (!Array.isArray(v) || !v.length || v.some((d) => typeof d !== 'string' || !d)) throw new ConfigError(`${name}: expected a list of folders`);
      return (v as string[]).map((d) => resolve(d));
    case 'string': {
      if (typeof v !== 'string' || v.length < (k.min ?? 0) || (k.pattern && !k.pattern.test(v))) throw new ConfigError(`${name}: ${k.what ?? 'expected a string'}, got ${shown}`);
      return v;
    }
    case 'int': {
      const n = typeof v === 'string' && /^\s*-?\d+\s*$/.test(v) ? Number(v) : v;
      if (typeof n !== 'number' || !Number.isInteger(n) || n < k.min || n > k.max) throw new ConfigError(`${name}: expected an integer from ${k.min} to ${k.max}, got ${shown}`);
      return n;
    }
    case 'bool':
      if (typeof v === 'boolean') return v;
      if (v === 'true' || v === '1' || v === 'yes') return true;
      if (v === 'false' || v === '0' || v === 'no') return false;
      throw new ConfigError(`${name}: expected true or false, got ${shown}`);
    case 'enum':
      if (typeof v !== 'string' || !k.values.includes(v)) throw new ConfigError(`${name}: expected one of ${k.values.join(', ')}`);
      return v;
  }
}

export interface ConfigSources {
  /** Flags already parsed: by setting key, or by the flag's camel-cased name as commander gives them (--host-timeout: hostTimeout). */
  flags: Record<string, unknown>;
  env: NodeJS.ProcessEnv;
}

const camel = (flag: string): string => flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** The configuration a start would use, with where each value came from. */
export interface ResolvedConfig {
  config: ServiceConfig;
  /** By setting key: 'default', 'config file PATH', 'environment VAR' or 'flag --NAME'. */
  origins: Map<string, string>;
  configFile: FileChoice;
  /** The LUKS keys file, configured or found (checked by the service at start). */
  keysFile: FileChoice;
}

/** serve's flags that are not settings: they act on this start only. */
export const SERVE_FLAGS: ReadonlyArray<{ flag: string; arg?: string; env?: string; help: string }> = [
  { flag: 'config', arg: 'file', env: 'SPARSIFY_CONFIG', help: 'JSON config file: an object of settings by key, as --check-config lists them (mode 0600); default /etc/sparsify/config.json, else DATA_DIR/config.json, when it exists' },
  { flag: 'check-config', help: 'print the settings this start would use, each with where it came from, check the files they name, and exit' },
  { flag: 'seed-demo', help: 'put the embedded demo disk into the first domain when it is empty (source checkouts: the package does not ship it)' },
];

export function loadConfig(src: ConfigSources): ServiceConfig {
  return resolveConfig(src).config;
}

export function resolveConfig(src: ConfigSources): ResolvedConfig {
  const flags = { ...src.flags };
  for (const s of SETTINGS) if (s.flag && flags[s.key] === undefined && flags[camel(s.flag)] !== undefined) flags[s.key] = flags[camel(s.flag)];
  const c = defaultConfig((flags.dataDir as string | undefined) ?? src.env.SPARSIFY_DATA_DIR);
  const origins = new Map<string, string>(SETTINGS.map((s) => [s.key, 'default']));
  const byKey = new Map(SETTINGS.map((s) => [s.key, s]));
  const configFile = chooseConfigFile(flags.config as string | undefined, src.env, c.dataDir);
  const file = configFile.path;
  if (file) {
    checkPrivateFile(file, 'config file');
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(file, 'utf8'));
    } catch (e) {
      // The parser quotes the text it choked on, which may be a secret: say only where.
      throw new ConfigError(`config file ${file}: ${e instanceof SyntaxError ? 'not valid JSON' : (e as Error).message}`);
    }
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new ConfigError(`config file ${file}: expected a JSON object`);
    for (const [k, v] of Object.entries(parsed)) {
      const s = byKey.get(k);
      if (!s) throw new ConfigError(`config file ${file}: unknown setting '${k}'`);
      if (k === 'dataDir' && file === join(c.dataDir, 'config.json')) throw new ConfigError(`config file ${file}: the data folder's own config file cannot move the data folder (set dataDir in /etc/sparsify/config.json, SPARSIFY_DATA_DIR or --data-dir)`);
      if (v === undefined || v === null) continue;
      s.set(c, convert(s, v, `config file ${file}: ${k}`));
      origins.set(k, `config file ${file}`);
    }
  }
  for (const s of SETTINGS) {
    const v = s.env ? src.env[s.env] : undefined;
    if (v === undefined || v === '') continue;
    s.set(c, convert(s, v, `environment: ${s.env} (${s.key})`));
    origins.set(s.key, `environment ${s.env}`);
  }
  for (const s of SETTINGS) {
    const v = flags[s.key];
    if (v === undefined || (Array.isArray(v) && !v.length)) continue;
    s.set(c, convert(s, v, `flag --${s.flag ?? s.key}`));
    origins.set(s.key, `flag --${s.flag ?? s.key}`);
  }
  if (!c.tlsCert !== !c.tlsKey) throw new ConfigError('--tls-cert and --tls-key go together: give both, or neither');
  // No domain given anywhere: one under the data folder, so it works out of the box.
  if (!c.domains.length) {
    c.domains = [join(c.dataDir, 'images')];
    origins.set('domains', 'default: DATA_DIR/images');
  }
  if (c.libvirt === undefined && existsSync(LIBVIRT_SOCKET)) {
    c.libvirt = 'qemu:///system';
    origins.set('libvirt', `default: ${LIBVIRT_SOCKET} exists`);
  }
  if (c.libvirt === 'none') c.libvirt = undefined;
  let keysFile: FileChoice;
  if (c.keysFile) keysFile = { path: c.keysFile, why: `set by ${origins.get('keysFile')}` };
  else {
    keysFile = defaultKeysFile(src.env, c.dataDir);
    if (keysFile.path) {
      c.keysFile = keysFile.path;
      origins.set('keysFile', `default: ${keysFile.why}`);
    }
  }
  return { config: c, origins, configFile, keysFile };
}
