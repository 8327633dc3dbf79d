/**
 * The manual pages and the shell completion against the commands they describe, in this tree's
 * build (`npm test` builds them): sparsify(1) documents exactly the options the tool lists, as
 * `--help` does (the rules of guestfs-tools' podcheck.pl, run against our own page); sparsify-serve(1)
 * has exactly the flags of `sparsify serve --help`; both render without a roff warning; and the
 * completion offers the table's options, the registry's formats, serve's flags and files.
 */
import { it, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sparsify } from '../helpers/cli.js';
import { haveTool, tempDir } from '../helpers/fixtures.js';
import { repoRoot } from '../service/service-helpers.js';
import { formatDrivers } from '../../src/formats/registry.js';
import { VERSION } from '../../src/version.js';
import { sparsifyManPage } from '../../scripts/build/man-sparsify.js';
import { serveManPage } from '../../scripts/build/man-serve.js';

const MAN = join(repoRoot, 'dist', 'man', 'man1');
const page = (name: string) => readFileSync(join(MAN, `${name}.1`), 'utf8');

/** The options a page documents: the bold options of its tagged paragraphs (.TP/.TQ) in OPTIONS. */
function documentedOptions(roff: string): Set<string> {
  const options = roff.slice(roff.indexOf('.SH OPTIONS'), roff.indexOf('\n.SH ', roff.indexOf('.SH OPTIONS') + 1));
  const tags = [...options.matchAll(/^\.T[PQ]\n(.*)$/gm)].map((m) => m[1]!);
  return new Set(tags.flatMap((t) => [...t.matchAll(/\\fB((?:\\-)+[\w\\-]+)\\fR/g)].map((m) => m[1]!.replace(/\\-/g, '-'))));
}

/** Every -x / --word in a text, as podcheck.pl reads --help (not inside a word: thin-provisioned). */
function mentioned(text: string): Set<string> {
  return new Set([...text.matchAll(/(?<!\w)(-[-\w]+)/g)].map((m) => m[1]!));
}

describe('sparsify(1) and --help against the options the tool lists', { timeout: 120_000 }, () => {
  const listed = () => [...sparsify(['--long-options']).stdout.trim().split('\n'), ...sparsify(['--short-options']).stdout.trim().split('\n')];
  /** Accepted for old scripts and documented only in passing, as virt-sparsify's own check ignores them. */
  const undocumented = new Set(['--inplace', '--debug-gc']);

  it('--long-options lists neither itself nor --short-options, as virt-sparsify\'s getopt does', () => {
    const long = sparsify(['--long-options']).stdout.trim().split('\n');
    assert.ok(!long.includes('--long-options') && !long.includes('--short-options'));
    assert.ok(long.includes('--help') && long.includes('--in-place') && long.includes('--analyze'));
    assert.deepEqual(sparsify(['--short-options']).stdout.trim().split('\n'), ['-V', '-o', '-q', '-v', '-x']);
  });

  it('the manual documents every option the tool lists, and no other', () => {
    const tool = new Set(listed().filter((o) => !undocumented.has(o)));
    assert.deepEqual([...documentedOptions(page('sparsify'))].sort(), [...tool].sort());
  });

  it('--help mentions every option the tool lists, and no other', () => {
    const help = mentioned(sparsify(['--help']).stdout);
    help.delete('--options'); // the synopsis's placeholder, as podcheck.pl reads it
    const tool = new Set(listed().filter((o) => !undocumented.has(o)));
    for (const o of tool) assert.ok(help.has(o), `--help mentions ${o}`);
    for (const o of help) assert.ok(tool.has(o), `${o} in --help is an option`);
  });

  it('the built pages are the tables as they are now (the build generated them)', () => {
    assert.equal(page('sparsify'), sparsifyManPage(VERSION));
    assert.equal(page('sparsify-serve'), serveManPage(VERSION));
  });
});

describe('sparsify-serve(1) against sparsify serve --help', { timeout: 120_000 }, () => {
  it('documents exactly the flags --help lists', () => {
    const help = sparsify(['serve', '--help']).stdout;
    const flags = new Set([...help.matchAll(/^ {2}(?:(-\w), )?(--[\w-]+)/gm)].flatMap((m) => (m[1] ? [m[1], m[2]!] : [m[2]!])));
    assert.ok(flags.has('--database') && flags.has('--log-format') && flags.has('--check-config'), [...flags].join(' '));
    assert.deepEqual([...documentedOptions(page('sparsify-serve'))].sort(), [...flags].sort());
  });

  it('names every environment variable of the settings', () => {
    const text = page('sparsify-serve');
    for (const env of new Set(sparsify(['serve', '--help']).stdout.match(/SPARSIFY_[A-Z_]+/g))) assert.ok(text.includes(`\\fB${env.replace(/-/g, '\\-')}\\fR`), env);
  });
});

describe('the pages render', { skip: ['man', 'groff'].find((t) => !haveTool(t)), timeout: 120_000 }, () => {
  for (const name of ['sparsify', 'sparsify-serve']) {
    it(`${name}(1): man -l shows it, groff warns of nothing`, () => {
      const file = join(MAN, `${name}.1`);
      const warnings = spawnSync('groff', ['-man', '-ww', '-z', file], { encoding: 'utf8' });
      assert.equal(warnings.stderr, '', 'no roff warning');
      const text = execFileSync('man', ['-l', '-P', 'cat', file], { encoding: 'utf8', env: { ...process.env, MANWIDTH: '80', MAN_DISABLE_SECCOMP: '1' } });
      assert.match(text, /^NAME\n {7}sparsify/m);
      assert.ok(!/\\f|\\-|^\./m.test(text), 'no roff left in the text');
    });
  }
});

describe('bash completion', { skip: haveTool('bash') ? false : 'no bash', timeout: 120_000 }, () => {
  let tmp: { dir: string; cleanup: () => void };
  const script = join(repoRoot, 'dist', 'completion', 'sparsify');
  const complete = (words: string[], cwd = tmp.dir) =>
    execFileSync('bash', ['-c', `source "$1" && COMP_WORDS=("\${@:2}") && COMP_CWORD=$((\${#COMP_WORDS[@]} - 1)) && _sparsify && printf '%s\\n' "\${COMPREPLY[@]}"`, 'bash', script, ...words], { encoding: 'utf8', cwd })
      .split('\n')
      .filter(Boolean)
      .sort();

  before(() => {
    tmp = tempDir('sparsify-completion-');
    writeFileSync(join(tmp.dir, 'vm1.qcow2'), '');
    writeFileSync(join(tmp.dir, 'vm2.raw'), '');
    mkdirSync(join(tmp.dir, 'vms'));
  });
  after(() => tmp?.cleanup());

  it('options, from the table', () => {
    const all = complete(['sparsify', '-']);
    for (const o of ['--analyze', '--compact', '--convert', '--in-place', '--machine-readable', '-q', '-o', '-V']) assert.ok(all.includes(o), o);
    for (const o of ['--long-options', '--short-options', '--debug-gc', '--inplace']) assert.ok(!all.includes(o), `${o} not offered`);
    assert.deepEqual(complete(['sparsify', '--in']), ['--in-place']);
  });

  it('the formats: --format reads them all, --convert those it can write; also written --opt=value', () => {
    const all = formatDrivers().map((d) => d.name).sort();
    const writable = formatDrivers().filter((d) => d.createWriter).map((d) => d.name).sort();
    assert.deepEqual(complete(['sparsify', '--format', '']), all);
    assert.deepEqual(complete(['sparsify', '--convert', '']), writable);
    assert.deepEqual(complete(['sparsify', '--convert', '=', 'q']), ['qcow2']);
    assert.deepEqual(complete(['sparsify', '-convert', 'vh']), ['vhdx']);
    assert.deepEqual(complete(['sparsify', '--check-tmpdir', 'w']), ['warn']);
  });

  it('files for the disks, nothing for device names', () => {
    assert.deepEqual(complete(['sparsify', '--in-place', 'vm']), ['vm1.qcow2', 'vm2.raw', 'vms']);
    assert.deepEqual(complete(['sparsify', 'vm1.qcow2', 'vm2']), ['vm2.raw']);
    assert.deepEqual(complete(['sparsify', '--zero', '']), []);
  });

  it('sparsify serve: its flags, their values, folders for --data-dir', () => {
    assert.deepEqual(complete(['sparsify', 'se']), ['serve']);
    assert.deepEqual(complete(['sparsify', 'serve', '--log-f']), ['--log-format']);
    assert.deepEqual(complete(['sparsify', 'serve', '--log-format', '']), ['json', 'pretty']);
    assert.deepEqual(complete(['sparsify', 'serve', '--default-mode', '']), ['copy-and-replace', 'in-place']);
    assert.deepEqual(complete(['sparsify', 'serve', '--data-dir', 'vm']), ['vms']);
    assert.deepEqual(complete(['sparsify', 'serve', '--port', '']), [], 'a number: nothing to offer');
    assert.ok(complete(['sparsify', 'serve', '--']).includes('--check-config'));
  });

  it('is registered for both names', () => {
    assert.equal(execFileSync('bash', ['-c', 'source "$1" && complete -p sparsify virt-sparsify', 'bash', script], { encoding: 'utf8' }), 'complete -o filenames -F _sparsify sparsify\ncomplete -o filenames -F _sparsify virt-sparsify\n');
  });
});
