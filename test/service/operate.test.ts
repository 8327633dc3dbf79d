/**
 * Operating the service as an administrator does, through the real command: `serve
 * --check-config` says what a start would use and why (and fails on what a start would refuse), a
 * token file others can read stops the start, and on a terminal the logs are short pretty lines
 * (a real pseudo-terminal, through util-linux's script).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { haveTool, tempDir } from '../helpers/fixtures.js';
import { repoRoot } from './service-helpers.js';

const BIN = join(repoRoot, 'bin', 'sparsify.js');

function serve(args: string[], env: Record<string, string>): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, 'serve', ...args], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, SPARSIFY_LIBVIRT: 'none', ...env } });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

describe('operating sparsify serve', { timeout: 120_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  let etc: string;
  let data: string;

  before(() => {
    tmp = tempDir('sparsify-operate-');
    etc = join(tmp.dir, 'etc');
    data = join(tmp.dir, 'data');
    mkdirSync(etc);
    mkdirSync(data);
  });
  after(() => tmp?.cleanup());

  it('--check-config: each value with the layer that gave it, the files chosen and why, then exits', () => {
    writeFileSync(join(etc, 'config.json'), JSON.stringify({ port: 9123, token: 'from-the-config-file', domains: [data] }), { mode: 0o600 });
    chmodSync(join(etc, 'config.json'), 0o600);
    const r = serve(['--check-config', '--concurrency', '2'], { SPARSIFY_CONFIG_DIR: etc, SPARSIFY_DATA_DIR: data, SPARSIFY_HOST: '::1' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const out = r.stdout;
    assert.match(out, new RegExp(`^config file +${join(etc, 'config.json')}: found in the configuration folder`, 'm'));
    assert.match(out, /^ {2}port +9123 +config file .*config\.json$/m);
    assert.match(out, /^ {2}host +::1 +environment SPARSIFY_HOST$/m);
    assert.match(out, /^ {2}concurrency +2 +flag --concurrency$/m);
    assert.match(out, /^ {2}token +\(set, hidden\) +config file/m);
    assert.match(out, /^log format +json \(stderr is not a terminal\)/m);
    assert.match(out, /No problems found/);
    assert.ok(!out.includes('from-the-config-file'), 'the token is never printed');
    assert.ok(!/listening/.test(out), 'it did not start');
  });

  it('--check-config fails on what a start would refuse: a keys file others can read', () => {
    writeFileSync(join(etc, 'luks-keys'), '{}', { mode: 0o644 });
    chmodSync(join(etc, 'luks-keys'), 0o644);
    const r = serve(['--check-config'], { SPARSIFY_CONFIG_DIR: etc, SPARSIFY_DATA_DIR: data });
    assert.equal(r.status, 1);
    assert.match(r.stdout, /^LUKS keys file +.*luks-keys: found in the configuration folder$/m);
    assert.match(r.stdout, /Problems \(a start would fail\):\n {2}keys file .*luks-keys has mode 0644: .* must be mode 0600/);
    chmodSync(join(etc, 'luks-keys'), 0o600);
  });

  it('refuses to start when the config or token file is readable by others, saying how to fix it', () => {
    chmodSync(join(etc, 'config.json'), 0o644);
    let r = serve(['--port', '0'], { SPARSIFY_CONFIG_DIR: etc, SPARSIFY_DATA_DIR: data });
    assert.equal(r.status, 1);
    assert.equal(r.stderr, `sparsify serve: error: config file ${join(etc, 'config.json')} has mode 0644: it may hold the token, the database password or keys, and must be mode 0600 (chmod 600 ${join(etc, 'config.json')})\n`);
    chmodSync(join(etc, 'config.json'), 0o600);
    const own = join(tmp.dir, 'own');
    mkdirSync(own);
    writeFileSync(join(own, 'token'), 'a-token-of-old\n', { mode: 0o644 });
    chmodSync(join(own, 'token'), 0o644);
    r = serve(['--port', '0', '--data-dir', own], { SPARSIFY_CONFIG_DIR: join(tmp.dir, 'no-etc') });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^sparsify serve: error: token file .*own\/token has mode 0644: .*\(chmod 600 .*own\/token\)\n$/);
  });

  it('on a terminal, the logs are short pretty lines; --log-format json keeps JSON there', { skip: haveTool('script') ? false : 'no script (util-linux)' }, async () => {
    const run = async (extra: string): Promise<string> => {
      const dir = join(tmp.dir, `tty${extra ? '-json' : ''}`);
      const cmd = `exec ${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)} serve --data-dir ${dir} --port 0 --token tty-token-123456 --scan-interval 0 ${extra}`;
      const p = spawn('script', ['-qfec', cmd, '/dev/null'], { env: { ...process.env, SPARSIFY_LIBVIRT: 'none', SPARSIFY_CONFIG_DIR: join(tmp.dir, 'no-etc'), TERM: 'dumb' }, stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      p.stdout.on('data', (b: Buffer) => (out += b.toString()));
      const exited = new Promise<void>((r) => p.once('exit', () => r()));
      try {
        const deadline = Date.now() + 30_000;
        while (!/listening on/.test(out)) {
          if (Date.now() > deadline || p.exitCode !== null) throw new Error(`no start on the terminal:\n${out}`);
          await new Promise((r) => setTimeout(r, 100));
        }
        await new Promise((r) => setTimeout(r, 500));
      } finally {
        // script hands SIGTERM to the service through the terminal's hang-up as well.
        p.kill('SIGTERM');
        const t = setTimeout(() => p.kill('SIGKILL'), 15_000);
        await exited;
        clearTimeout(t);
      }
      return out.replace(/\r/g, '');
    };
    const pretty = await run('');
    const logLines = pretty.split('\n').filter((l) => /^\d\d:\d\d:\d\d /.test(l) || l.startsWith('{'));
    assert.ok(logLines.length > 0, pretty);
    assert.ok(logLines.every((l) => /^\d\d:\d\d:\d\d \x1b\[\d+m(INFO |WARN |ERROR|DEBUG)\x1b\[0m /.test(l)), `pretty, coloured lines:\n${logLines.join('\n')}`);
    const json = await run('--log-format json');
    assert.ok(json.split('\n').some((l) => l.startsWith('{"level":30')), json);
  });
});
