/**
 * NBD servers for the tests: qemu-nbd and nbdkit on a Unix socket in the test's folder, started
 * and waited for (the socket appears once they listen), stopped with SIGTERM (SIGKILL after 5 s).
 * `stop` is safe to call twice and after the server died on its own.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export interface TestServer {
  uri: string;
  socket: string;
  proc: ChildProcess;
  /** What the server printed on stderr so far. */
  log: () => string;
  stop: () => Promise<void>;
}

let serial = 0;

async function start(cmd: string, args: string[], socket: string): Promise<TestServer> {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr?.on('data', (b: Buffer) => (err += b.toString()));
  let exited = false;
  const gone = new Promise<void>((resolve) => proc.once('exit', () => ((exited = true), resolve())));
  proc.once('error', (e) => (err += String(e)));
  const stop = async (): Promise<void> => {
    if (exited) return;
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(t);
  };
  const deadline = Date.now() + 15_000;
  while (!existsSync(socket)) {
    if (exited || Date.now() > deadline) {
      await stop();
      throw new Error(`${cmd} did not start: ${err}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { uri: `nbd+unix:///?socket=${socket}`, socket, proc, log: () => err, stop };
}

/** qemu-nbd serving `file` (read-only unless `writable`), persistent so several clients may come in turn. */
export function qemuNbd(dir: string, file: string, opts: { format: string; writable?: boolean; extra?: string[] }): Promise<TestServer> {
  const socket = join(dir, `qemu-nbd-${++serial}.sock`);
  const args = ['-f', opts.format, '-k', socket, '--persistent', ...(opts.writable ? [] : ['-r']), ...(opts.extra ?? []), file];
  return start('qemu-nbd', args, socket);
}

/** nbdkit in the foreground: `args` are options, the plugin and its parameters (e.g. ['--filter=error', 'file', 'disk.raw']). */
export function nbdkit(dir: string, args: string[]): Promise<TestServer> {
  const socket = join(dir, `nbdkit-${++serial}.sock`);
  return start('nbdkit', ['-f', '-U', socket, ...args], socket);
}

/** nbdkit on TCP 127.0.0.1:`port` (ready once its pid file exists); `args` as for `nbdkit`. */
export async function nbdkitTcp(dir: string, port: number, args: string[]): Promise<TestServer> {
  const pidFile = join(dir, `nbdkit-tcp-${++serial}.pid`);
  const server = await start('nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(port), '-P', pidFile, ...args], pidFile);
  return { ...server, uri: `nbd://127.0.0.1:${port}/` };
}

/** The servers a test file started, each stopped in its `after` (releaseAll(...pool.stops)) whatever happened. */
export class ServerPool {
  private readonly started: TestServer[] = [];

  /** Keep a started server, and give it back. */
  add(server: TestServer): TestServer {
    this.started.push(server);
    return server;
  }

  /** Wait for a server to start, and keep it. */
  async serve(starting: Promise<TestServer>): Promise<TestServer> {
    return this.add(await starting);
  }

  get stops(): Array<() => Promise<void>> {
    return this.started.map((s) => s.stop);
  }
}
