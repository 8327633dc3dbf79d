/**
 * `sparsify serve`: one host of the service: the HTTP API, the web UI, the scanner and the job
 * runner. Alone on SQLite in the data folder (the default), or one of several hosts sharing a
 * PostgreSQL database (--database). Its options come from the settings table (config.ts).
 */
import { Command, CommanderError } from 'commander';
import { resolveConfig, ConfigError, SETTINGS, SERVE_FLAGS, type ResolvedConfig, type ServiceConfig } from './config.js';
import { checkConfig } from './check-config.js';
import { Service } from './service.js';
import { buildServer, isLoopback, type ApiServer } from './api/server.js';
import { seedDemoDisk } from './demo-seed.js';
import { DbFatalError } from './store/db.js';
import { describeStore } from './store/store.js';
import { HostNameInUseError } from './hosts/registry.js';
import { DataDirInUseError } from './hosts/data-dir-lock.js';
import { DomainError } from './domains/identity.js';
import { chooseLogFormat, createLogger } from './logging.js';
import { SparsifyError } from '../index.js';

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

function program(): Command {
  const p = new Command('sparsify serve')
    .description('Serve the REST API, the web UI and the job runner for the images of one or more storage domains; with --database, as one host of a cluster')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s), writeOut: (s) => process.stdout.write(s) });
  for (const s of SETTINGS) {
    if (!s.flag || s.hidden) continue;
    const help = `${s.help} (${s.env ? `env ${s.env}; ` : ''}default ${s.defaultText})`;
    const spec = `--${s.flag} <${s.arg ?? 'value'}>`;
    if (s.kind.t === 'paths') p.option(spec, help, collect, []);
    else p.option(spec, help);
  }
  for (const f of SERVE_FLAGS) p.option(f.arg ? `--${f.flag} <${f.arg}>` : `--${f.flag}`, f.env ? `${f.help} (env ${f.env})` : f.help);
  return p;
}

export async function serveMain(argv: readonly string[]): Promise<number> {
  const p = program();
  try {
    p.parse(argv as string[], { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    throw e;
  }
  const flags = p.opts<Record<string, unknown> & { seedDemo?: boolean; checkConfig?: boolean }>();
  const fail = (msg: string) => {
    process.stderr.write(`sparsify serve: error: ${msg}\n`);
    return 1;
  };
  let resolved: ResolvedConfig;
  try {
    resolved = resolveConfig({ flags, env: process.env });
  } catch (e) {
    if (e instanceof ConfigError) return fail(e.message);
    throw e;
  }
  const config: ServiceConfig = resolved.config;
  if (flags.checkConfig) {
    const report = await checkConfig(resolved, process.env, Boolean(process.stderr.isTTY));
    process.stdout.write(report.text);
    return report.problems.length ? 1 : 0;
  }
  const { log, pino } = createLogger(config.logLevel, config.hostName, chooseLogFormat(config.logFormat, Boolean(process.stderr.isTTY)).format);
  if (flags.seedDemo) {
    let seeded: string | undefined;
    try {
      seeded = await seedDemoDisk(config.domains[0]!);
    } catch (e) {
      return fail((e as Error).message);
    }
    if (seeded) log.info(`seeded ${seeded} with the embedded demo disk`);
  }

  let svc: Service;
  try {
    svc = await Service.open(config, log);
  } catch (e) {
    if (e instanceof DbFatalError || e instanceof DataDirInUseError || e instanceof SparsifyError || e instanceof ConfigError) return fail(e.message);
    return fail(`cannot open the database (${describeStore({ databaseUrl: config.database, dataDir: config.dataDir })}): ${(e as Error).message}`);
  }
  let api: ApiServer | undefined;
  let address: string;
  try {
    await svc.start();
    api = await buildServer(svc, pino);
    address = await api.app.listen({ host: config.host, port: config.port });
  } catch (e) {
    await api?.close().catch(() => undefined);
    await svc.stop().catch(() => undefined);
    const known = e instanceof HostNameInUseError || e instanceof DomainError || e instanceof DbFatalError;
    return fail(known ? (e as Error).message : `cannot start: ${(e as Error).message}`);
  }
  const base = address.replace('://[::1]', '://localhost');
  await svc.announce(base).catch(() => undefined);
  const out = (s: string) => process.stdout.write(`sparsify serve: ${s}\n`);
  out(`listening on ${base}`);
  out(`host ${config.hostName}; ${describeStore({ databaseUrl: config.database, dataDir: config.dataDir })}; domains ${svc.mounts.list().map((d) => `${d.root} (${d.id})`).join(', ')}`);
  if (svc.tokenGenerated) out(`generated an API token (kept in ${config.dataDir}/token): ${svc.token}`);
  out(`open ${base}/#token=${svc.token}`);
  if (!isLoopback(config.host)) {
    out(`listening beyond localhost: every call needs the token, reads included (GET /api/health does not)${config.tlsCert ? '' : '; without --tls-cert/--tls-key the token travels in clear'}`);
  }

  return new Promise<number>((resolveExit) => {
    let stopping = false;
    const stop = async () => {
      if (stopping) return;
      stopping = true;
      log.info('stopping');
      // Whatever hangs (a database that does not answer, a stuck share), the process ends.
      setTimeout(() => {
        log.error(`did not stop within ${config.shutdownTimeoutSeconds + 5} s; exiting anyway`);
        resolveExit(1);
      }, (config.shutdownTimeoutSeconds + 5) * 1000).unref();
      await api!.close().catch(() => undefined);
      await svc.stop(config.shutdownTimeoutSeconds * 1000).catch(() => undefined);
      resolveExit(0);
    };
    process.once('SIGINT', () => void stop());
    process.once('SIGTERM', () => void stop());
  });
}
