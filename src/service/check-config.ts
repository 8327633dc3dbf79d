/**
 * `sparsify serve --check-config`: what a start would use and why, without starting. Each setting
 * with its value (secrets hidden) and the layer that gave it; the config and keys files and why
 * they were chosen; the token's source; the store; the log format; and the checks a start makes
 * before it touches anything (file modes, the keys file parsing, the SQLite addon loading). It
 * writes nothing. Problems are listed, and make the exit status 1.
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { SETTINGS, type ResolvedConfig } from './config.js';
import { checkPrivateFile, configDirOf } from './config-files.js';
import { chooseLogFormat } from './logging.js';
import { describeStore } from './store/store.js';
import { loadKeysFile } from '../layout/luks/keys.js';
import { sqliteAddon } from '../io/addons.js';

const SECRETS = new Set(['token', 'metricsToken', 'database']);

function shown(key: string, value: unknown): string {
  if (value === undefined) return '(none)';
  if (SECRETS.has(key)) return '(set, hidden)';
  return Array.isArray(value) ? value.join(', ') : String(value);
}

/** The value of a setting by its key, wherever it lives in the config (the policy's are nested). */
function valueOf(r: ResolvedConfig, key: string): unknown {
  const c = r.config as unknown as Record<string, unknown>;
  return key in c ? c[key] : (r.config.policy as unknown as Record<string, unknown>)[key];
}

export interface CheckReport {
  text: string;
  problems: string[];
}

export async function checkConfig(r: ResolvedConfig, env: NodeJS.ProcessEnv, stderrIsTerminal: boolean): Promise<CheckReport> {
  const c = r.config;
  const lines: string[] = [];
  const problems: string[] = [];
  const line = (label: string, text: string) => lines.push(`${label.padEnd(22)} ${text}`);

  line('configuration folder', `${configDirOf(env)}${env.SPARSIFY_CONFIG_DIR ? ' (SPARSIFY_CONFIG_DIR)' : ''}`);
  line('config file', r.configFile.path ? `${r.configFile.path}: ${r.configFile.why}` : r.configFile.why);
  line('data folder', `${c.dataDir} (${r.origins.get('dataDir')})`);
  line('store', `${describeStore({ databaseUrl: c.database, dataDir: c.dataDir })} (${r.origins.get('database') === 'default' ? 'default: no --database' : r.origins.get('database')})`);
  if (!c.database) {
    try {
      sqliteAddon();
    } catch (e) {
      problems.push((e as Error).message);
    }
  }

  const tokenFile = join(c.dataDir, 'token');
  if (c.token) line('API token', `set by ${r.origins.get('token')} (hidden)`);
  else if (existsSync(tokenFile)) {
    line('API token', `kept in ${tokenFile}`);
    try {
      checkPrivateFile(tokenFile, 'token file');
    } catch (e) {
      problems.push((e as Error).message);
    }
  } else line('API token', `none yet: generated at first start into ${tokenFile} (mode 0600)`);

  line('LUKS keys file', r.keysFile.path ? `${r.keysFile.path}: ${r.keysFile.why}` : r.keysFile.why);
  if (r.keysFile.path) {
    try {
      (await loadKeysFile(r.keysFile.path)).dispose();
    } catch (e) {
      problems.push((e as Error).message);
    }
  }

  for (const d of c.domains) {
    let state: string;
    try {
      state = statSync(d).isDirectory() ? 'exists' : 'is not a folder';
    } catch {
      state = d === join(c.dataDir, 'images') ? 'created at start' : 'missing';
    }
    line('storage domain', `${d} (${state})`);
    if (state === 'is not a folder' || state === 'missing') problems.push(`storage domain ${d} ${state === 'missing' ? 'does not exist' : 'is not a folder'}`);
  }
  const log = chooseLogFormat(c.logFormat, stderrIsTerminal);
  line('log format', `${log.format} (${c.logFormat ? r.origins.get('logFormat') : log.why}), level ${c.logLevel}`);

  lines.push('', 'Settings (value, and where it came from):');
  for (const s of SETTINGS) {
    if (s.hidden) continue;
    lines.push(`  ${s.key.padEnd(24)} ${shown(s.key, valueOf(r, s.key)).padEnd(32)} ${r.origins.get(s.key) ?? 'default'}`);
  }
  lines.push('');
  lines.push(problems.length ? `Problems (a start would fail):\n${problems.map((p) => `  ${p}`).join('\n')}` : 'No problems found: a start would use the above.');
  return { text: lines.join('\n') + '\n', problems };
}
