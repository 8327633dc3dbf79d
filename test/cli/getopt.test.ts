/** virt-sparsify's command-line rules (getopt_long_only), exercised on our parser. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseCommandLine, UsageError } from '../../src/cli/options.js';

test('long options work with one dash, as unique prefixes, and after the file names', { timeout: 300_000 }, () => {
  const o = parseCommandLine(['in.img', '-in-place', '--conv', 'qcow2', 'out.img', '-machine-readable', '--ign=/dev/sda1', '-ignore', 'VG']);
  assert.equal(o.inPlace, true);
  assert.equal(o.convert, 'qcow2');
  assert.equal(o.machineReadable, '');
  assert.deepEqual(o.ignore, ['/dev/sda1', 'VG']);
  assert.deepEqual(o.operands, ['in.img', 'out.img']);
});

test('short options: bundled flags, attached and separate values; aliases', { timeout: 300_000 }, () => {
  const o = parseCommandLine(['-vx', '-ocluster_size=512', '-q', '--inplace', '--colours', 'disk']);
  assert.equal(o.verbose, true);
  assert.equal(o.trace, true);
  assert.equal(o.quiet, true);
  assert.equal(o.outputOptions, 'cluster_size=512');
  assert.equal(o.inPlace, true);
  assert.equal(o.colors, true);
  assert.equal(parseCommandLine(['-o', 'compat=1.1', 'a', 'b']).outputOptions, 'compat=1.1');
  assert.equal(parseCommandLine(['-v']).verbose, true, '-v alone is the short option, not a prefix');
  assert.equal(parseCommandLine(['-V']).version, true);
});

test('values with = or as the next word; the last single value wins; -- ends options', { timeout: 300_000 }, () => {
  const o = parseCommandLine(['--convert=raw', '--convert', 'qcow2', '--format=raw', '--', '-weird-name', 'out']);
  assert.equal(o.convert, 'qcow2');
  assert.equal(o.format, 'raw');
  assert.deepEqual(o.operands, ['-weird-name', 'out']);
  assert.equal(parseCommandLine(['--machine-readable=file:/tmp/x']).machineReadable, 'file:/tmp/x');
});

test('--check-tmpdir takes virt-sparsify aliases and rejects anything else', { timeout: 300_000 }, () => {
  for (const [v, mode] of [['i', 'ignore'], ['cont', 'continue'], ['c', 'continue'], ['warning', 'warn'], ['w', 'warn'], ['f', 'fail'], ['error', 'fail']]) {
    assert.equal(parseCommandLine(['--check-tmpdir', v!]).checkTmpdir, mode);
  }
  assert.throws(() => parseCommandLine(['--check-tmpdir=maybe']), /unknown --check-tmpdir option: maybe/);
});

test('errors: unknown, ambiguous, missing argument, unexpected argument', { timeout: 300_000 }, () => {
  assert.throws(() => parseCommandLine(['--frobnicate']), (e: unknown) => e instanceof UsageError && /unrecognized option '--frobnicate'/.test(e.message));
  assert.throws(() => parseCommandLine(['-ver']), /option '-ver' is ambiguous; possibilities: '-verbose' '-version'/);
  assert.throws(() => parseCommandLine(['--convert']), /option '--convert' requires an argument/);
  assert.throws(() => parseCommandLine(['--compress=yes']), /option '--compress' doesn't allow an argument/);
  assert.throws(() => parseCommandLine(['-o']), /requires an argument -- 'o'/);
});
