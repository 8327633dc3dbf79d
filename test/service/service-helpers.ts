/**
 * Running the real service process for tests: spawn `serve` (from src with tsx, or from dist when
 * the tests are compiled), wait for its address, talk HTTP to it, kill it hard or stop it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { buildDisk } from '../helpers/disk-builder.js';
import { rmSync } from 'node:fs';
import { fileContent, run, runStatus, sha256 } from '../helpers/fixtures.js';
import { extract, e2fsck, extFileSums } from '../helpers/ext-fixtures.js';

export const TOKEN = 'test-token-0123456789';

export interface Server {
  url: string;
  proc: ChildProcess;
  output: () => string;
  /** SIGKILL: the service dies mid-whatever. */
  kill: () => Promise<void>;
  /** SIGTERM and wait (20 s at most, then SIGKILL and an error). */
  stop: () => Promise<void>;
}

function entry(): { args: string[] } {
  const fromTs = import.meta.url.endsWith('.ts');
  const bin = fileURLToPath(new URL(`../../src/service/bin.${fromTs ? 'ts' : 'js'}`, import.meta.url));
  return { args: fromTs ? ['--import', 'tsx', bin] : [bin] };
}

/** Every server a test started and has not stopped: `stopAllServers` (in `after`) kills what a failed test left. */
const live = new Set<ChildProcess>();

export async function stopAllServers(): Promise<void> {
  const procs = [...live];
  live.clear();
  await Promise.all(
    procs.map(
      (p) =>
        new Promise<void>((r) => {
          if (p.exitCode !== null || p.signalCode !== null) return r();
          p.once('exit', () => r());
          p.kill('SIGKILL');
        }),
    ),
  );
}

export interface ServerOptions {
  dataDir: string;
  domains?: string[];
  env?: Record<string, string>;
  token?: string | null;
  /** postgres://...: a host of a cluster. */
  database?: string;
  hostName?: string;
  args?: string[];
  /** Options for node itself (a profiler, say). */
  nodeArgs?: string[];
  /** An installed `sparsify` command to run as `sparsify serve` instead of this tree's service. */
  command?: string;
}

export async function startServer(opts: ServerOptions): Promise<Server> {
  const serve = opts.command ? ['serve'] : [...(opts.nodeArgs ?? []), ...entry().args];
  const args = [...serve, '--data-dir', opts.dataDir, '--port', '0', '--host', '127.0.0.1'];
  for (const d of opts.domains ?? []) args.push('--domain', d);
  if (opts.token !== null) args.push('--token', opts.token ?? TOKEN);
  if (opts.database) args.push('--database', opts.database);
  if (opts.hostName) args.push('--host-name', opts.hostName);
  args.push(...(opts.args ?? []));
  const proc = spawn(opts.command ?? process.execPath, args, {
    // No VMs from this machine's libvirt and no /etc/sparsify unless a test asks: tests never
    // depend on what runs or is configured here.
    env: { ...process.env, SPARSIFY_SCAN_INTERVAL: '0', SPARSIFY_LIBVIRT: 'none', SPARSIFY_CONFIG_DIR: '/nonexistent/sparsify-tests', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(proc);
  proc.once('exit', () => live.delete(proc));
  let out = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`server did not start in time:\n${out}`)), 30_000);
    const check = () => {
      const m = /listening on (https?:\/\/[^\s]+)/.exec(out);
      if (m) {
        clearTimeout(t);
        resolve(m[1]!);
      }
    };
    proc.stdout!.on('data', check);
    proc.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`server exited (${code}) before listening:\n${out}`));
    });
  });
  return {
    url,
    proc,
    output: () => out,
    kill: async () => {
      proc.kill('SIGKILL');
      await exited;
    },
    stop: async () => {
      proc.kill('SIGTERM');
      // A server that ignores SIGTERM fails the test instead of hanging it.
      let timer: NodeJS.Timeout | undefined;
      const late = await Promise.race([exited.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), 20_000)))]);
      clearTimeout(timer);
      if (late) {
        proc.kill('SIGKILL');
        await exited;
        throw new Error(`the server did not stop within 20 s of SIGTERM:\n${out.slice(-2000)}`);
      }
    },
  };
}

export interface Reply<T = Record<string, unknown>> {
  status: number;
  body: T;
  headers: Headers;
}

export async function http<T = Record<string, any>>(s: Server, method: string, path: string, body?: unknown, opts: { token?: string | null; raw?: string; contentType?: string } = {}): Promise<Reply<T>> {
  const headers: Record<string, string> = {};
  const token = opts.token === undefined ? TOKEN : opts.token;
  if (token) headers.authorization = `Bearer ${token}`;
  let payload: string | undefined;
  if (opts.raw !== undefined) payload = opts.raw;
  else if (body !== undefined) payload = JSON.stringify(body);
  if (payload !== undefined) headers['content-type'] = opts.contentType ?? 'application/json';
  let res: Response;
  try {
    res = await fetch(s.url + path, { method, headers, body: payload });
  } catch (e) {
    // A kept-alive connection the server closed while this process was busy (a long fsck) fails
    // once; a read is safe to repeat on a new connection. A dead server fails again.
    const cause = (e as { cause?: { code?: string } }).cause?.code;
    if (method !== 'GET' || (cause !== 'UND_ERR_SOCKET' && cause !== 'ECONNRESET')) throw e;
    res = await fetch(s.url + path, { method, headers, body: payload });
  }
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body: parsed as T, headers: res.headers };
}

/** Read a server's live stream (/api/stream) into a string until `close()`. */
export async function readStream(s: Server, path = '/api/stream'): Promise<{ text: () => string; close: () => Promise<void> }> {
  const ctl = new AbortController();
  const res = await fetch(`${s.url}${path}`, { signal: ctl.signal });
  let text = '';
  const reading = (async () => {
    const reader = res.body!.getReader();
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
      if (done) return;
      text += Buffer.from(value!).toString();
    }
  })();
  return {
    text: () => text,
    close: async () => {
      ctl.abort();
      await reading;
    },
  };
}

export async function waitFor<T>(what: string | (() => string), fn: () => Promise<T | undefined | false>, timeoutMs = 20_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Ask for a sparsify job (expecting 202) and wait for it to end; returns the ended job. */
export async function sparsifyAndWait(s: Server, diskId: string, body: unknown, timeoutMs = 90_000): Promise<Record<string, any>> {
  const r = await http(s, 'POST', `/api/disks/${diskId}/sparsify`, body);
  if (r.status !== 202) throw new Error(`sparsify ${diskId}: ${r.status} ${JSON.stringify(r.body)}`);
  return waitFor(`job ${r.body.job.id} to end`, async () => {
    const j = (await http(s, 'GET', `/api/jobs/${r.body.job.id}`)).body.job;
    return j.status === 'pending' || j.status === 'running' ? undefined : j;
  }, timeoutMs);
}

/** All disks once every one of them has been analyzed (a loaded machine may want a longer `timeoutMs`). */
export async function analyzedDisks(s: Server, count: number, timeoutMs = 20_000): Promise<Array<Record<string, any>>> {
  let last = '';
  return waitFor(() => `${count} analyzed disks; last seen: ${last}`, async () => {
    const r = await http<{ disks: Array<Record<string, any>> }>(s, 'GET', '/api/disks');
    const d = r.body.disks;
    last = d.map((x) => `${x.name}:${x.status}:${x.analysis.state}`).join(', ');
    return d.length === count && d.every((x) => x.analysis.state !== 'pending' || x.status === 'illegal') ? d : undefined;
  }, timeoutMs);
}

export function diskByName(disks: Array<Record<string, any>>, name: string): Record<string, any> {
  const d = disks.find((x) => x.name === name);
  if (!d) throw new Error(`no disk ${name} in ${disks.map((x) => x.name).join(', ')}`);
  return d;
}

/**
 * A guest disk as a VM leaves it: GPT, one ext4 partition built on garbage with a few files and a
 * deleted big one, so most of the partition is free space the host still stores.
 */
export function makeGuestDisk(path: string, workDir: string, seed = 'disk', sizeMiB = 34): void {
  buildDisk(path, {
    sizeMiB,
    label: 'gpt',
    garbage: true,
    workDir,
    parts: [{ sizeMiB: sizeMiB - 2, ext: { type: 'ext4', files: guestFiles(seed, sizeMiB), remove: ['data/old.bin'] } }],
  });
}

function guestFiles(seed: string, sizeMiB: number): Record<string, Buffer> {
  return { 'etc/hostname': Buffer.from(`${seed}\n`), 'data/keep.bin': fileContent(`${seed}-keep`, 1 << 20), 'data/old.bin': fileContent(`${seed}-old`, Math.min(8, sizeMiB >> 2) << 20) };
}

/**
 * The guest's view of a disk made by makeGuestDisk, checked with the real tools: qemu-img check
 * (image formats but vpc, which qemu-img cannot check; its reading driver still converts it),
 * e2fsck -fn of its filesystem, and every kept file's checksum. `path` may be a block device
 * holding the image. Returns a problem, or undefined when all is well.
 */
export function guestProblem(path: string, format: 'raw' | 'qcow2' | 'vdi' | 'vmdk' | 'vpc' | 'vhdx', workDir: string, seed: string, sizeMiB = 34): string | undefined {
  const tag = Math.random().toString(36).slice(2);
  let raw = path;
  if (format !== 'raw') {
    const check = format === 'vpc' ? { status: 0, stdout: '', stderr: '' } : runStatus('qemu-img', ['check', '-q', '-f', format, path]);
    if (check.status !== 0) return `qemu-img check ${path}: ${check.stdout}${check.stderr}`;
    raw = join(workDir, `guest-${tag}.raw`);
    run('qemu-img', ['convert', '-f', format, '-O', 'raw', path, raw]);
  }
  const part = join(workDir, `part-${tag}.img`);
  try {
    extract(raw, 1 << 20, (sizeMiB - 2) << 20, part);
    const fsck = e2fsck(part);
    if (fsck.status !== 0) return `e2fsck ${path}: ${fsck.output}`;
    const sums = extFileSums(part, workDir);
    const want = guestFiles(seed, sizeMiB);
    for (const name of ['etc/hostname', 'data/keep.bin']) {
      if (sums.get(name) !== sha256(want[name]!)) return `${path}: ${name} differs from what was written`;
    }
    if (sums.has('data/old.bin')) return `${path}: the deleted file is back`;
    return undefined;
  } finally {
    rmSync(part, { force: true });
    if (raw !== path) rmSync(raw, { force: true });
  }
}

/** A raw disk created preallocated (fallocate: space reserved, never written). */
export function makePreallocated(path: string, size: number): void {
  run('fallocate', ['-l', String(size), path]);
}

export const here = fileURLToPath(new URL('.', import.meta.url));
export const repoRoot = join(here, '..', '..', ...(import.meta.url.endsWith('.ts') ? [] : ['..']));
