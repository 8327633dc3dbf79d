/** Running the built CLI as a user would. Tests that use it need `npm run build` first (npm test does it). */
import { spawnSync, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';


function cliPath(): string {
  // Works both from dist/test/helpers (npm test) and test/helpers (tsx).
  const here = fileURLToPath(new URL('.', import.meta.url));
  return here.includes('/dist/') ? join(here, '..', '..', '..', 'bin', 'sparsify.js') : join(here, '..', '..', 'bin', 'sparsify.js');
}

export interface CliResult {
  status: number;
  stdout: string;
  stderr: string;
}

export function sparsify(args: string[], opts: { input?: string } = {}): CliResult {
  const r = spawnSync(process.execPath, [cliPath(), ...args], { encoding: 'utf8', input: opts.input ?? '', maxBuffer: 64 << 20 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export function sparsifyAsync(args: string[]): ChildProcess {
  return spawn(process.execPath, [cliPath(), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
}
