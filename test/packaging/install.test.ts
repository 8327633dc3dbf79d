/**
 * The npm package as a user meets it: `npm pack` (which builds first) of this tree, installed with
 * `npm install -g --prefix TMP --omit=optional` where no compiler works, then the installed
 * commands: a copy and an in-place sparsify of a zlib qcow2, virt-sparsify naming itself, the
 * optional addons' absence said clearly, the man pages through the package's `man` field, the
 * completion script under bash, the unit file under systemd-analyze, and an upgrade by installing
 * a newer tarball over this one. Each step is a test; everything lives in one temporary folder
 * that `after` removes, with any server a step left running.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { lstatSync, readdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';
import { tempDir, haveTool, run, runStatus, releaseAll, allocatedBytes } from '../helpers/fixtures.js';
import { startPostgres, postgresMissing, type PgCluster } from '../helpers/postgres.js';
import { encryptLuks2, PASSPHRASE } from '../helpers/luks-fixtures.js';
import { startServer, stopAllServers, http, makeGuestDisk, guestProblem, sparsifyAndWait, repoRoot } from '../service/service-helpers.js';
import { FIXTURE, A_ID, releaseRows, makeDomain, checkUpgraded, loadIntoPostgres } from '../service/release-0.1.0.js';
import { packCopy, installGlobal, runInstalled, withVersion, type PackResult, type Ran } from './package-helpers.js';

/** The bar for the tarball. */
const MAX_PACKED_BYTES = 2 * 1024 * 1024;
const OPTIONAL_ADDONS = ['argon2', 'better-sqlite3', 'zstd-napi'];

const missing = ['qemu-img', 'mkfs.ext4', 'sgdisk', 'man', 'systemd-analyze', 'bash', 'tar', 'cryptsetup'].find((t) => !haveTool(t));

/** The commit the build records: this checkout's HEAD, or 'unknown' outside git. */
function expectedCommit(): RegExp {
  try {
    const head = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: repoRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return new RegExp(`\\(commit ${head}(-dirty)?\\)`);
  } catch {
    return /\(commit unknown\)/;
  }
}

describe('the npm package, installed as a user would', { skip: missing ? `missing ${missing}` : false, timeout: 1_200_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let pack: PackResult;
  let install: Ran;
  let prefix: string;
  let pg: PgCluster | undefined;
  const packageDir = () => join(prefix, 'lib', 'node_modules', 'sparsify');

  before(
    () => {
      tmp = tempDir('sparsify-package-');
      prefix = join(tmp.dir, 'prefix');
      pack = packCopy(repoRoot, tmp.dir);
      install = installGlobal(prefix, pack.tarball);
      process.stdout.write(`# packed ${pack.size} bytes (${pack.files.length} files, ${pack.unpackedSize} unpacked) in ${pack.seconds.toFixed(1)} s; installed without optional addons or a compiler in ${install.seconds.toFixed(1)} s\n`);
    },
    { timeout: 900_000 },
  );

  after(() => releaseAll(stopAllServers, () => pg?.stop(), () => tmp?.cleanup()));

  it('npm pack builds first and ships only what runs, under 2 MB', { timeout: 60_000 }, () => {
    assert.ok(pack.size < MAX_PACKED_BYTES, `the tarball is ${pack.size} bytes`);
    const f = new Set(pack.files);
    for (const p of ['bin/sparsify.js', 'bin/virt-sparsify.js', 'dist/src/cli/main.js', 'dist/src/index.d.ts', 'dist/src/service/engine/worker.js', 'dist/web/index.html', 'dist/man/man1/sparsify.1', 'dist/man/man1/sparsify-serve.1', 'dist/completion/sparsify', 'dist/build-info.json', 'packaging/sparsify.service', 'packaging/sparsify.env', 'README.md', 'LICENSE', 'package.json']) {
      assert.ok(f.has(p), `ships ${p}`);
    }
    const stray = pack.files.filter((p) => /^(dist\/(test|bench|scripts)\/|test\/|bench\/|src\/|web\/|scripts\/|examples\/|node_modules\/)|\.map$|\.tsx?$(?<!\.d\.ts)/.test(p));
    assert.deepEqual(stray, [], 'no tests, benchmarks, sources, source maps or UI sources');
    assert.ok(pack.files.filter((p) => p.startsWith('dist/web/')).every((p) => /^dist\/web\/(index\.html|assets\/[\w-]+\.(js|css))$/.test(p)), 'the UI as built');
  });

  it('installs with --omit=optional and no compiler: sparsify and virt-sparsify on the PATH, no optional addon', { timeout: 60_000 }, () => {
    for (const cmd of ['sparsify', 'virt-sparsify']) assert.ok(lstatSync(join(prefix, 'bin', cmd)).isSymbolicLink(), `${cmd} in PREFIX/bin`);
    const deps = readdirSync(join(packageDir(), 'node_modules'));
    for (const addon of OPTIONAL_ADDONS) assert.ok(!deps.includes(addon), `${addon} left out`);
    const v = runInstalled(prefix, 'sparsify', ['--version']);
    assert.equal(v.status, 0, v.stderr);
    const version = (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;
    assert.ok(v.stdout.startsWith(`sparsify ${version} `), v.stdout);
    assert.match(v.stdout, expectedCommit());
  });

  it('the installed sparsify copies and sparsifies in place a zlib qcow2', { timeout: 300_000 }, () => {
    const dir = join(tmp.dir, 'zlib');
    run('mkdir', ['-p', dir]);
    const guest = join(dir, 'guest.raw');
    makeGuestDisk(guest, dir, 'pkg');
    const input = join(dir, 'in.qcow2');
    run('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zlib', guest, input]);
    assert.match(run('qemu-img', ['info', input]), /compression type: zlib/);
    const inputBytes = allocatedBytes(input);

    const copy = join(dir, 'out.qcow2');
    const c = runInstalled(prefix, 'sparsify', ['--convert', 'qcow2', input, copy]);
    assert.equal(c.status, 0, c.stderr);
    assert.match(c.stdout, /Sparsify operation completed with no errors/);
    assert.equal(guestProblem(copy, 'qcow2', dir, 'pkg'), undefined);
    assert.ok(allocatedBytes(copy) < inputBytes / 2, `the copy holds ${allocatedBytes(copy)} bytes, the input ${inputBytes}`);

    const p = runInstalled(prefix, 'sparsify', ['--in-place', input]);
    assert.equal(p.status, 0, p.stderr);
    assert.match(p.stdout, /Sparsify in-place operation completed with no errors/);
    assert.equal(runStatus('qemu-img', ['check', '-q', input]).status, 0);
    assert.equal(guestProblem(input, 'qcow2', dir, 'pkg'), undefined);
    assert.ok(allocatedBytes(input) < inputBytes / 2, `in place: ${allocatedBytes(input)} bytes left of ${inputBytes}`);
  });

  it('installed as virt-sparsify, it names itself virt-sparsify', { timeout: 60_000 }, () => {
    const v = runInstalled(prefix, 'virt-sparsify', ['--version']);
    assert.match(v.stdout, /^virt-sparsify \d+\.\d+\.\d+ \(commit /);
    const bad = runInstalled(prefix, 'virt-sparsify', ['--bogus']);
    assert.equal(bad.status, 1);
    assert.equal(bad.stderr, "virt-sparsify: unrecognized option '--bogus'\nTry 'virt-sparsify --help' for more information.\n");
    const err = runInstalled(prefix, 'virt-sparsify', [join(tmp.dir, 'absent.img'), join(tmp.dir, 'out.img')]);
    assert.equal(err.status, 1);
    assert.match(err.stderr, /^virt-sparsify: error: cannot open .*absent\.img: ENOENT$/m);
    assert.match(runInstalled(prefix, 'virt-sparsify', ['--help']).stdout, /^virt-sparsify: make a virtual machine disk image/);
    assert.equal(runInstalled(prefix, 'virt-sparsify', ['--machine-readable']).stdout.split('\n')[0], 'virt-sparsify');
  });

  it('a missing optional addon stops only its feature, naming it and the package, exit 1', { timeout: 180_000 }, () => {
    const dir = join(tmp.dir, 'addons');
    run('mkdir', ['-p', dir]);
    // zstd qcow2: zstd-napi.
    const raw = join(dir, 'small.raw');
    run('truncate', ['-s', '32M', raw]);
    run('mkfs.ext4', ['-q', raw]);
    const zstd = join(dir, 'zstd.qcow2');
    run('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', raw, zstd]);
    const z = runInstalled(prefix, 'sparsify', [zstd, join(dir, 'out.qcow2')]);
    assert.equal(z.status, 1);
    assert.match(z.stderr, /^sparsify: error: Reading or writing zstd-compressed qcow2 needs the optional package zstd-napi, which is not installed\. npm compiles it/m);
    assert.doesNotMatch(z.stderr + z.stdout, /\n\s+at /, 'no stack trace');
    assert.ok(!readdirSync(dir).some((n) => n.includes('out.qcow2')), 'nothing written');
    // An Argon2 LUKS2 keyslot: argon2.
    const luks = join(dir, 'luks.img');
    run('truncate', ['-s', '24M', luks]);
    encryptLuks2(luks, { pbkdf: 'argon2id' });
    const l = runInstalled(prefix, 'sparsify', ['--key', `all:key:${PASSPHRASE}`, luks, join(dir, 'luks-out.img')]);
    assert.equal(l.status, 1);
    assert.match(l.stderr, /keyslot 0: Opening a LUKS2 keyslot that uses Argon2 key derivation needs the optional package argon2/);
    assert.ok(!l.stderr.includes(PASSPHRASE), 'the key is never printed');
    // The service's SQLite store: better-sqlite3; --check-config says so too.
    const s = runInstalled(prefix, 'sparsify', ['serve', '--data-dir', join(dir, 'data'), '--port', '0'], { env: { SPARSIFY_LIBVIRT: 'none' } });
    assert.equal(s.status, 1);
    assert.match(s.stderr, /^sparsify serve: error: The service's embedded SQLite store .* needs the optional package better-sqlite3, which is not installed/m);
    const check = runInstalled(prefix, 'sparsify', ['serve', '--check-config', '--data-dir', join(dir, 'data')], { env: { SPARSIFY_LIBVIRT: 'none' } });
    assert.equal(check.status, 1);
    assert.match(check.stdout, /Problems \(a start would fail\):\n {2}The service's embedded SQLite store .*better-sqlite3/);
    // Everything else: a raw copy still works.
    assert.equal(runInstalled(prefix, 'sparsify', [raw, join(dir, 'copy.raw')]).status, 0);
  });

  it("man sparsify and man sparsify-serve work through the package's man field", { timeout: 60_000 }, () => {
    const env = { ...process.env, MANPATH: join(prefix, 'share', 'man'), MANWIDTH: '100', MAN_DISABLE_SECCOMP: '1' };
    for (const page of ['sparsify', 'sparsify-serve']) {
      // npm links PREFIX/share/man/man1/PAGE.1 to the package's file; man -w names the file.
      const linked = join(prefix, 'share', 'man', 'man1', `${page}.1`);
      assert.ok(lstatSync(linked).isSymbolicLink(), `${linked} installed`);
      const where = execFileSync('man', ['-w', page], { env, encoding: 'utf8' }).trim();
      assert.equal(realpathSync(where), realpathSync(linked));
      const text = execFileSync('man', ['-l', '-P', 'cat', where], { env, encoding: 'utf8' });
      for (const section of ['NAME', 'SYNOPSIS', 'DESCRIPTION', 'OPTIONS', 'EXIT STATUS', 'FILES', 'ENVIRONMENT', 'EXAMPLES', 'SEE ALSO']) {
        assert.match(text, new RegExp(`^${section}$`, 'm'), `${page}(1) has ${section}`);
      }
    }
    const sparsify = execFileSync('man', ['-l', '-P', 'cat', join(packageDir(), 'dist', 'man', 'man1', 'sparsify.1')], { env, encoding: 'utf8' });
    assert.match(sparsify, /^DIFFERENCES FROM VIRT-SPARSIFY$/m);
  });

  it('the completion script of the package, sourced under bash -c', { timeout: 60_000 }, () => {
    const script = join(packageDir(), 'dist', 'completion', 'sparsify');
    const complete = (words: string[]) =>
      execFileSync('bash', ['-c', `source "$1" && COMP_WORDS=("\${@:2}") && COMP_CWORD=$((\${#COMP_WORDS[@]} - 1)) && _sparsify && printf '%s\\n' "\${COMPREPLY[@]}"`, 'bash', script, ...words], { encoding: 'utf8', cwd: tmp.dir }).split('\n').filter(Boolean);
    assert.equal(execFileSync('bash', ['-c', 'source "$1" && complete -p sparsify virt-sparsify', 'bash', script], { encoding: 'utf8' }), 'complete -o filenames -F _sparsify sparsify\ncomplete -o filenames -F _sparsify virt-sparsify\n');
    assert.deepEqual(complete(['virt-sparsify', '--conv']), ['--convert']);
    assert.deepEqual(complete(['sparsify', '--convert', '']).sort(), ['qcow2', 'raw', 'vdi', 'vhdx', 'vmdk', 'vpc']);
  });

  it('systemd-analyze verify accepts the installed unit', { timeout: 60_000 }, () => {
    const unit = join(packageDir(), 'packaging', 'sparsify.service');
    // Its Documentation= names man pages: found through the prefix as man would find them installed.
    const r = runStatus('env', [`MANPATH=${join(prefix, 'share', 'man')}`, 'systemd-analyze', 'verify', unit]);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.equal(r.stderr.trim(), '', 'no warning');
  });

  it('upgrade: the real 0.1.0 database, this package, then a newer tarball installed over it and restarted; every disk, job and event kept', { skip: postgresMissing(), timeout: 600_000 }, async () => {
    // Without better-sqlite3 (--omit=optional) the package's store is PostgreSQL: 0.1.0's own rows,
    // in the version-1 schema, as an older install leaves the database.
    pg = await startPostgres();
    const url = pg.database('package_upgrade');
    const release = join(tmp.dir, 'release.db');
    writeFileSync(release, gunzipSync(readFileSync(FIXTURE)));
    const rows = releaseRows(release);
    await loadIntoPostgres(url, rows);
    const dir = join(tmp.dir, 'upgrade');
    const domain = makeDomain(dir);
    const dataDir = join(dir, 'data');
    const command = join(prefix, 'bin', 'sparsify');
    const serve = () => startServer({ command, dataDir, domains: [domain], database: url, args: ['--log-format', 'pretty'], env: { PATH: `${join(prefix, 'bin')}:${process.env.PATH ?? ''}` } });

    let server = await serve();
    await checkUpgraded(server, rows);
    // A job of this version, then a clean stop on SIGTERM within the shutdown timeout.
    const job = await sparsifyAndWait(server, A_ID, {});
    assert.equal(job.status, 'finished', JSON.stringify(job));
    const before = {
      disks: (await http(server, 'GET', '/api/disks')).body.disks as Array<{ id: string }>,
      jobs: (await http(server, 'GET', '/api/jobs?limit=500')).body.jobs as Array<{ id: string; status: string }>,
      events: (await http(server, 'GET', '/api/events?limit=500')).body.events as Array<{ id: number; message: string }>,
    };
    const t0 = Date.now();
    await server.stop();
    assert.equal(server.proc.exitCode, 0, 'a clean stop');
    assert.ok(Date.now() - t0 < 15_000, `stopped in ${Date.now() - t0} ms (shutdown timeout 10 s)`);
    assert.match(server.output(), /^\d\d:\d\d:\d\d INFO {2}stopping$/m, 'pretty logs');
    assert.ok(!server.output().split('\n').some((l) => l.startsWith('{')), 'no JSON lines with --log-format pretty');
    assert.ok(!server.output().includes(pg.password), 'the password is never printed');

    // A newer release over this one, then a restart.
    const newer = withVersion(pack.tarball, '99.0.0', tmp.dir);
    installGlobal(prefix, newer);
    assert.match(runInstalled(prefix, 'sparsify', ['--version']).stdout, /^sparsify 99\.0\.0 /);
    server = await serve();
    const disks = (await http(server, 'GET', '/api/disks')).body.disks as Array<{ id: string }>;
    assert.deepEqual(disks.map((d) => d.id).sort(), before.disks.map((d) => d.id).sort());
    const jobs = (await http(server, 'GET', '/api/jobs?limit=500')).body.jobs as Array<{ id: string; status: string }>;
    for (const j of before.jobs) assert.equal(jobs.find((x) => x.id === j.id)?.status, j.status, `job ${j.id} kept`);
    const events = (await http(server, 'GET', '/api/events?limit=500')).body.events as Array<{ id: number; message: string }>;
    for (const e of before.events) assert.ok(events.some((x) => x.id === e.id && x.message === e.message), `event kept: ${e.message}`);
    const hosts = (await http(server, 'GET', '/api/hosts')).body.hosts as Array<{ version: string }>;
    assert.equal(hosts[0]?.version, '99.0.0', 'the host runs the newer release');
    await server.stop();
    assert.equal(server.proc.exitCode, 0);
  });
});
