/**
 * Packing and installing sparsify as a user would: `npm pack` (whose prepack builds) in a copy of
 * this tree, and `npm install -g --prefix` of the tarball into a temporary prefix, without the
 * optional addons and with no compiler at hand. The copy keeps the build from touching this
 * tree's dist/ while other tests run from it.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, readFileSync, symlinkSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

/** What prepack needs to build and what the package ships: the rest of the tree stays behind. */
const BUILD_INPUTS = ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'src', 'scripts/build', 'web', 'bin', 'packaging', 'README.md', 'LICENSE'];

export interface PackResult {
  tarball: string;
  /** Bytes of the .tgz. */
  size: number;
  unpackedSize: number;
  files: string[];
  seconds: number;
}

export interface Ran {
  status: number;
  stdout: string;
  stderr: string;
  seconds: number;
}

function runIn(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs: number; input?: string }): Ran {
  const t0 = Date.now();
  const r = spawnSync(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, encoding: 'utf8', input: opts.input ?? '', timeout: opts.timeoutMs, maxBuffer: 64 << 20 });
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}\n${r.stdout ?? ''}${r.stderr ?? ''}`);
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, seconds: (Date.now() - t0) / 1000 };
}

/** `npm pack` of a copy of `root` into `workDir`; its prepack builds. The copy uses root's node_modules (the dev tools). */
export function packCopy(root: string, workDir: string): PackResult {
  const copy = join(workDir, 'tree');
  mkdirSync(copy, { recursive: true });
  for (const p of BUILD_INPUTS) cpSync(join(root, p), join(copy, p), { recursive: true });
  symlinkSync(join(root, 'node_modules'), join(copy, 'node_modules'));
  // The build records the commit: the repository is root's, whose HEAD this copy is (plus changes).
  const env = { ...process.env, GIT_DIR: join(root, '.git') };
  const r = runIn('npm', ['pack', '--json', '--pack-destination', workDir], { cwd: copy, env, timeoutMs: 600_000 });
  if (r.status !== 0) throw new Error(`npm pack failed (${r.status}):\n${r.stderr.slice(-4000)}`);
  // The lifecycle scripts print to stdout before the JSON.
  const json = JSON.parse(r.stdout.slice(r.stdout.lastIndexOf('\n[') + 1)) as Array<{ filename: string; size: number; unpackedSize: number; files: Array<{ path: string }> }>;
  const p = json[0]!;
  return { tarball: join(workDir, p.filename), size: p.size, unpackedSize: p.unpackedSize, files: p.files.map((f) => f.path), seconds: r.seconds };
}

/**
 * `npm install -g --prefix PREFIX --omit=optional TARBALL`, as on a machine without a compiler:
 * CC and CXX fail, so any addon that tried to compile would fail the install.
 */
export function installGlobal(prefix: string, tarball: string): Ran {
  const env = { ...process.env, CC: '/bin/false', CXX: '/bin/false', npm_config_build_from_source: 'false' };
  const r = runIn('npm', ['install', '-g', '--prefix', prefix, '--omit=optional', '--allow-scripts=koffi', '--prefer-offline', '--no-audit', '--no-fund', tarball], { env, timeoutMs: 600_000 });
  if (r.status !== 0) throw new Error(`npm install of ${tarball} failed (${r.status}):\n${r.stderr.slice(-4000)}`);
  return r;
}

/** Run an installed command with the prefix's bin first on the PATH. */
export function runInstalled(prefix: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; input?: string } = {}): Ran {
  const env = { ...process.env, PATH: `${join(prefix, 'bin')}:${process.env.PATH ?? ''}`, ...opts.env };
  return runIn(join(prefix, 'bin', cmd), args, { env, timeoutMs: opts.timeoutMs ?? 120_000, input: opts.input });
}

/**
 * The same tarball at another version (its package.json rewritten, then packed again with tar):
 * what `npm install` of a newer release over this one meets, minus code changes.
 */
export function withVersion(tarball: string, version: string, workDir: string): string {
  const dir = join(workDir, `repack-${version}`);
  mkdirSync(dir, { recursive: true });
  runIn('tar', ['-xzf', tarball, '-C', dir], { timeoutMs: 60_000 });
  const file = join(dir, 'package', 'package.json');
  const pkg = JSON.parse(readFileSync(file, 'utf8')) as { version: string };
  pkg.version = version;
  writeFileSync(file, JSON.stringify(pkg, null, 2) + '\n');
  const out = join(workDir, `sparsify-${version}.tgz`);
  const r = runIn('tar', ['-czf', out, '-C', dir, 'package'], { timeoutMs: 60_000 });
  if (r.status !== 0) throw new Error(`tar: ${r.stderr}`);
  return out;
}

export function removeAll(...paths: string[]): void {
  for (const p of paths) rmSync(p, { recursive: true, force: true });
}
