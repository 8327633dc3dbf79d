/**
 * Damaged and hostile LUKS headers, and the key options themselves. Each bad header gets a clear
 * error quickly (exit 1, no stack trace, nothing written), and no key ever shows up in anything
 * sparsify prints, whatever the verbosity.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { chmodSync, copyFileSync, existsSync, truncateSync, writeFileSync } from 'node:fs';
import { tempDir, haveTool, patchFile, readBytes } from '../helpers/fixtures.js';
import { sparsify } from '../helpers/cli.js';
import { PASSPHRASE, encryptLuks1, encryptLuks2, rewriteLuks2Json, writeSecretFile } from '../helpers/luks-fixtures.js';
import { loadKeysFile, parseKeySelector } from '../../src/layout/luks/keys.js';
import { keyLines } from '../../src/cli/keys.js';

const skip = !haveTool('cryptsetup') || !haveTool('qemu-img') ? 'cryptsetup or qemu-img not installed' : false;

/** Run with a key and expect a quick, clear error matching `re`, and no output file. */
function expectError(t: { dir: string }, img: string, re: RegExp, key = PASSPHRASE): string {
  const out = join(t.dir, `out-${Math.random().toString(36).slice(2)}.img`);
  const started = Date.now();
  const r = sparsify(['--key', `all:key:${key}`, img, out]);
  assert.equal(r.status, 1, r.stdout + r.stderr);
  assert.match(r.stderr, re);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  assert.ok(Date.now() - started < 10_000, 'quick');
  assert.equal(existsSync(out), false);
  return r.stderr;
}

describe('LUKS bad input and keys', { skip, timeout: 120_000 }, () => {
  let t: ReturnType<typeof tempDir>;
  let l1: string;
  let l2: string;

  before(() => {
    t = tempDir('sparsify-luks-bad-');
    const plain = join(t.dir, 'plain.img');
    writeFileSync(plain, '');
    truncateSync(plain, 8 << 20);
    l1 = join(t.dir, 'l1.img');
    encryptLuks1(plain, l1, { mode: 'xts-plain64', hash: 'sha256' });
    l2 = join(t.dir, 'l2.img');
    writeFileSync(l2, '');
    truncateSync(l2, 12 << 20);
    encryptLuks2(l2, { pbkdf: 'argon2id' });
  });
  after(() => t.cleanup());

  test('LUKS1: a keyslot area beyond the end of the volume, absurd PBKDF2 iterations', () => {
    const img = join(t.dir, 'l1-slot.img');
    copyFileSync(l1, img);
    // Keyslot 0's key-material offset (sectors) at 208 + 40: far past the end of the 10 MiB image.
    const off = Buffer.alloc(4);
    off.writeUInt32BE(0x100000);
    patchFile(img, 208 + 40, off);
    expectError(t, img, /keyslot 0: key material at 0x20000000\+0x[0-9a-f]+ lies beyond the end of the volume \(size 0x[0-9a-f]+\): truncated/);

    copyFileSync(l1, img);
    const iters = Buffer.alloc(4);
    iters.writeUInt32BE(0xffffffff);
    patchFile(img, 208 + 4, iters);
    expectError(t, img, /keyslot 0: PBKDF2 iteration count 4294967295 exceeds the limit of 100000000 .*refusing to derive/);

    // The volume key digest's own iteration count is capped too.
    copyFileSync(l1, img);
    patchFile(img, 164, iters);
    expectError(t, img, /PBKDF2 iteration count 4294967295 exceeds/);
  });

  test('LUKS2: truncated image, JSON area with a bad checksum, absurd argon2 memory, an unsupported cipher', () => {
    const img = join(t.dir, 'l2-bad.img');
    copyFileSync(l2, img);
    truncateSync(img, 0x20000);
    expectError(t, img, /\/dev\/sda \(LUKS2 UUID [0-9a-f-]+\): cannot be opened: keyslot 0: key material at 0x8000\+0x[0-9a-f]+ lies beyond the end of the volume \(size 0x20000\): truncated/);

    // One flipped byte in the JSON area of both copies: no usable header.
    copyFileSync(l2, img);
    for (const at of [0x1000 + 2, 0x4000 + 0x1000 + 2]) patchFile(img, at, Buffer.from([readBytes(img, at, 1)[0]! ^ 0x20]));
    expectError(t, img, /\/dev\/sda: no usable LUKS2 header: primary: sha256 checksum mismatch; secondary: sha256 checksum mismatch/);
    // Without a key it is kept whole, with a warning.
    const r = sparsify([img, join(t.dir, 'nokey.img')]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /warning: \/dev\/sda: .*checksum mismatch.*; kept whole/);

    copyFileSync(l2, img);
    rewriteLuks2Json(img, (j) => {
      const slot = (j['keyslots'] as Record<string, { kdf: Record<string, unknown> }>)['0']!;
      slot.kdf['memory'] = 2 ** 31; // KiB: 2 TiB
    });
    expectError(t, img, /keyslot 0: argon2id memory cost 2\.0 TiB exceeds the 4\.0 GiB cryptsetup allows; refusing to derive/);

    copyFileSync(l2, img);
    rewriteLuks2Json(img, (j) => {
      const slot = (j['keyslots'] as Record<string, { kdf: Record<string, unknown> }>)['0']!;
      slot.kdf = { type: 'pbkdf2', hash: 'sha256', iterations: 3_000_000_000, salt: slot.kdf['salt'] };
    });
    expectError(t, img, /PBKDF2 iteration count 3000000000 exceeds/);

    copyFileSync(l2, img);
    rewriteLuks2Json(img, (j) => {
      (j['segments'] as Record<string, Record<string, unknown>>)['0']!['encryption'] = 'serpent-xts-plain64';
    });
    expectError(t, img, /cipher 'serpent-xts-plain64' is not supported \(supported: aes-xts-plain64/);

    copyFileSync(l2, img);
    rewriteLuks2Json(img, (j) => {
      (j['config'] as Record<string, unknown>)['requirements'] = { mandatory: ['online-reencrypt'] };
    });
    expectError(t, img, /LUKS2 requirement 'online-reencrypt' is not supported/);
  });

  test('key options: clevis refused, unreadable file, key file first line, unmatched ID warned; keys never printed', () => {
    let r = sparsify(['--key', '/dev/sda2:clevis', l2, join(t.dir, 'x.img')]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--key \/dev\/sda2:clevis: Clevis\/Tang network unlocking is not supported/);
    r = sparsify(['--key', '/dev/sda:file:/nonexistent/key', l2, join(t.dir, 'x.img')]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--key \/dev\/sda:file:\/nonexistent\/key: cannot read the key file \(ENOENT\)/);
    r = sparsify(['--key', 'nonsense', l2, join(t.dir, 'x.img')]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /expected ID:key:KEY_STRING or ID:file:FILENAME/);

    const secret = 'Tr0ub4dor&3-never-printed';
    for (const args of [['-v', '-x'], ['--machine-readable'], ['-v', '-x', '--machine-readable']]) {
      r = sparsify([...args, '--key', `/dev/sda:key:${secret}`, '--key', `/dev/sdb9:key:${secret}2`, l2, join(t.dir, 'y.img')]);
      assert.equal(r.status, 1);
      assert.ok(!(r.stdout + r.stderr).includes(secret), `key printed with ${args.join(' ')}`);
      assert.ok(!(r.stdout + r.stderr).includes('Tr0ub4dor'), `part of a key printed with ${args.join(' ')}`);
    }
    const keyFile = join(t.dir, 'key');
    writeSecretFile(keyFile, `${PASSPHRASE}\nnot the key\n`);
    r = sparsify(['-v', '-x', '--analyze', '--key', `/dev/sda:file:${keyFile}`, '--key', `/dev/sdb9:key:${secret}`, l2]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /\/dev\/mapper\/luks-[0-9a-f-]{36}/);
    assert.match(r.stdout, /--key \/dev\/sdb9: no encrypted volume has this device name or LUKS UUID; ignored/);
    assert.ok(!(r.stdout + r.stderr).includes(secret) && !(r.stdout + r.stderr).includes(PASSPHRASE));
  });

  test('the service keys file: mode 0600 or refused; JSON or --key lines, keyed by LUKS UUID', async () => {
    const uuid = '0f3c8a5e-1d2b-4c6a-9e7f-123456789abc';
    const json = join(t.dir, 'keys.json');
    writeSecretFile(json, JSON.stringify({ [uuid]: 'pw1' }), 0o644);
    await assert.rejects(loadKeysFile(json), /keys file .*keys\.json has mode 0644: it holds LUKS keys and must be mode 0600/);
    chmodSync(json, 0o600);
    const store = await loadKeysFile(json);
    const keys = await store.keysFor({ device: '/dev/sda2', uuid: uuid.toUpperCase() });
    assert.deepEqual(keys.map(String), ['pw1']);
    assert.deepEqual(await store.keysFor({ device: '/dev/sda2', uuid: '11111111-2222-3333-4444-555555555555' }), []);
    store.dispose();
    assert.deepEqual([...keys[0]!], [0, 0, 0], 'dispose zeroes the keys');

    const lines = join(t.dir, 'keys.txt');
    const pwFile = join(t.dir, 'pw');
    writeSecretFile(pwFile, 'from a file\n');
    writeSecretFile(lines, `# comment\n\n${uuid}:key:with: colons\n${uuid.replace('0f', '1f')}:file:${pwFile}\n`);
    const s2 = await loadKeysFile(lines);
    assert.deepEqual((await s2.keysFor({ device: '/dev/x', uuid })).map(String), ['with: colons']);
    assert.deepEqual((await s2.keysFor({ device: '/dev/x', uuid: uuid.replace('0f', '1f') })).map(String), ['from a file']);

    writeSecretFile(join(t.dir, 'bad.json'), JSON.stringify({ '/dev/sda2': 'pw' }));
    await assert.rejects(loadKeysFile(join(t.dir, 'bad.json')), /'\/dev\/sda2' is not a LUKS UUID/);
    writeSecretFile(join(t.dir, 'broken.json'), '{ "a": "secret-in-broken-json" ');
    await assert.rejects(loadKeysFile(join(t.dir, 'broken.json')), (e: Error) => /not valid JSON/.test(e.message) && !e.message.includes('secret-in'));

    // Selector parsing and stdin lines.
    assert.deepEqual(String((await parseKeySelector('all:key:a:b')).key), 'a:b');
    assert.deepEqual(keyLines(Buffer.from('one\r\n\ntwo\nthree')).map(String), ['one', 'two', 'three']);
  });
});
