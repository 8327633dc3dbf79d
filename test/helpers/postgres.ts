/**
 * A private PostgreSQL for tests: initdb and pg_ctl run as the `postgres` user (when we are root)
 * in a temporary folder, on a free port, with a password (so tests can check it is never printed).
 * `stop()` removes everything; `restart()` is a real server restart.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface PgCluster {
  url: string;
  /** The URL of another database in the same cluster (created on demand). */
  database(name: string): string;
  /** A real restart (fast shutdown, start), without blocking this process meanwhile. */
  restart(): Promise<void>;
  stop(): void;
  password: string;
}

function binDir(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => existsSync(join(root, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] ? join(root, versions[0], 'bin') : undefined;
}

/** Why PostgreSQL tests cannot run here, or undefined when they can. */
export function postgresMissing(): string | undefined {
  if (!binDir()) return 'PostgreSQL is not installed (apt-get install postgresql)';
  if (process.getuid?.() === 0 && spawnSync('id', ['postgres']).status !== 0) return 'no postgres user to run the server as';
  return undefined;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export async function startPostgres(): Promise<PgCluster> {
  const bin = binDir();
  if (!bin) throw new Error('PostgreSQL is not installed');
  const root = process.getuid?.() === 0;
  const dir = mkdtempSync(join(tmpdir(), 'sparsify-pg-'));
  const data = join(dir, 'data');
  const password = 'pg-secret-' + Math.random().toString(36).slice(2, 10);
  const asPostgres = (cmd: string, args: string[]) => {
    const r = root ? spawnSync('runuser', ['-u', 'postgres', '--', join(bin, cmd), ...args], { encoding: 'utf8' }) : spawnSync(join(bin, cmd), args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}${r.stdout}`);
    return r.stdout;
  };
  const port = await freePort();
  let started = false;
  const ctl = (action: string, extra: string[] = []) => asPostgres('pg_ctl', ['-D', data, '-w', '-t', '60', '-l', join(dir, 'server.log'), ...extra, action]);
  try {
    if (root) chownSync(dir, Number(execFileSync('id', ['-u', 'postgres']).toString()), Number(execFileSync('id', ['-g', 'postgres']).toString()));
    const pwfile = join(dir, 'pw');
    writeFileSync(pwfile, password + '\n', { mode: 0o644 });
    asPostgres('initdb', ['-D', data, '-U', 'postgres', '--auth=scram-sha-256', `--pwfile=${pwfile}`, '-E', 'UTF8', '--no-sync']);
    rmSync(pwfile);
    // fsync off: a test cluster need not survive a power cut, and it is much faster.
    const opts = `-c port=${port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=${dir} -c fsync=off -c max_connections=200 -c full_page_writes=off`;
    ctl('start', ['-o', opts]);
    started = true;
    const psql = (db: string, sql: string) => {
      const r = spawnSync(join(bin, 'psql'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', db, '-v', 'ON_ERROR_STOP=1', '-c', sql], { encoding: 'utf8', env: { ...process.env, PGPASSWORD: password } });
      if (r.status !== 0) throw new Error(`psql: ${r.stderr}`);
    };
    const created = new Set<string>();
    const database = (name: string) => {
      if (!created.has(name)) {
        psql('postgres', `CREATE DATABASE "${name}"`);
        created.add(name);
      }
      return `postgres://postgres:${password}@127.0.0.1:${port}/${name}`;
    };
    return {
      url: database('sparsify'),
      database,
      password,
      restart: () =>
        new Promise<void>((resolve, reject) => {
          const args = ['-D', data, '-w', '-t', '60', '-l', join(dir, 'server.log'), '-m', 'fast', '-o', opts, 'restart'];
          const p = root ? spawn('runuser', ['-u', 'postgres', '--', join(bin, 'pg_ctl'), ...args], { stdio: 'ignore' }) : spawn(join(bin, 'pg_ctl'), args, { stdio: 'ignore' });
          p.once('error', reject);
          p.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`pg_ctl restart exited with ${code}`))));
        }),
      stop: () => {
        try {
          if (started) ctl('stop', ['-m', 'immediate']);
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      },
    };
  } catch (e) {
    try {
      if (started) ctl('stop', ['-m', 'immediate']);
    } catch {
      // stopping is best effort here
    }
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
