/**
 * `sparsify serve`: one process with the HTTP API, the web UI and the job runner, on an embedded
 * SQLite database in the data folder. Flags win over the environment, which wins over --config.
 */
import { Command, CommanderError } from 'commander';
import { loadConfig, ConfigError } from './config.js';
import { Service } from './service.js';
import { buildServer } from './server.js';
import { seedDemoDisk } from './demo-seed.js';

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

export async function serveMain(argv: readonly string[]): Promise<number> {
  const program = new Command('sparsify serve')
    .description('Serve the REST API, the web UI and the job runner for the images of one or more storage domains')
    .option('--data-dir <dir>', 'folder for the database, the token and the default domain (env SPARSIFY_DATA_DIR; default ~/.local/share/sparsify)')
    .option('--domain <dir>', 'a storage domain: a folder of images (repeatable; env SPARSIFY_DOMAINS=a:b; default DATA_DIR/images)', collect, [])
    .option('--host <addr>', 'address to listen on (env SPARSIFY_HOST; default 127.0.0.1: localhost only)')
    .option('--port <n>', 'port (env SPARSIFY_PORT; default 8080; 0: any free port)')
    .option('--token <secret>', 'token for calls that change anything (env SPARSIFY_TOKEN; default: generated at first start and kept in DATA_DIR/token)')
    .option('--seed-demo', 'put the embedded demo disk into the first domain when it is empty')
    .option('--config <file>', 'JSON config file (env SPARSIFY_CONFIG); keys: dataDir, domains, host, port, token, concurrency, scanIntervalSeconds, defaultMode, onRestart, maxAttempts, thresholdBytes, thresholdPercent, scheduleEnabled, scheduleIntervalSeconds')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s), writeOut: (s) => process.stdout.write(s) });
  try {
    program.parse(argv as string[], { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    throw e;
  }
  const flags = program.opts<{ dataDir?: string; domain: string[]; host?: string; port?: string; token?: string; config?: string; seedDemo?: boolean }>();
  let svc: Service;
  const log = (s: string) => process.stderr.write(`sparsify serve: ${s}\n`);
  try {
    const config = loadConfig({ flags, env: process.env });
    if (flags.seedDemo) {
      const seeded = await seedDemoDisk(config.domains[0]!);
      if (seeded) log(`seeded ${seeded} with the embedded demo disk`);
    }
    svc = new Service(config, log);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`sparsify serve: error: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  const app = buildServer(svc);
  let address: string;
  try {
    await svc.start();
    address = await app.listen({ host: svc.config.host, port: svc.config.port });
  } catch (e) {
    process.stderr.write(`sparsify serve: error: ${(e as Error).message}\n`);
    await svc.stop().catch(() => undefined);
    return 1;
  }
  const base = address.replace('://[::1]', '://localhost');
  process.stdout.write(`sparsify serve: listening on ${base}\n`);
  process.stdout.write(`sparsify serve: data folder ${svc.config.dataDir}; domains ${svc.scanner.domains.map((d) => d.root).join(', ')}\n`);
  if (svc.tokenGenerated) process.stdout.write(`sparsify serve: generated an API token (kept in ${svc.config.dataDir}/token): ${svc.token}\n`);
  process.stdout.write(`sparsify serve: open ${base}/#token=${svc.token}\n`);
  if (svc.config.host !== '127.0.0.1' && svc.config.host !== 'localhost' && svc.config.host !== '::1') {
    process.stdout.write(`sparsify serve: warning: listening on ${svc.config.host}, not only localhost; anyone who can reach it can read the disk list\n`);
  }

  return new Promise<number>((resolveExit) => {
    let stopping = false;
    const stop = async () => {
      if (stopping) return;
      stopping = true;
      log('stopping');
      await app.close().catch(() => undefined);
      await svc.stop().catch(() => undefined);
      resolveExit(0);
    };
    process.once('SIGINT', () => void stop());
    process.once('SIGTERM', () => void stop());
  });
}
