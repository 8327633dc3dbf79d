/** NBD addresses (doc/uri.md): the forms, the export name, TLS settings, and what messages may show. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isNbdUri, parseNbdUri, safeDisplay } from '../../src/io/nbd/uri.js';

const T = { timeout: 10_000 };

test('TCP and Unix forms, default port, percent-decoded export names, IPv6 hosts', T, () => {
  let a = parseNbdUri('nbd://example.com/disk%201');
  assert.deepEqual([a.host, a.port, a.exportName, a.tls, a.socket], ['example.com', 10809, 'disk 1', false, undefined]);
  a = parseNbdUri('nbd://10.0.0.1:10810');
  assert.deepEqual([a.host, a.port, a.exportName], ['10.0.0.1', 10810, '']);
  a = parseNbdUri('nbd://[::1]:2000/x');
  assert.deepEqual([a.host, a.port, a.exportName], ['::1', 2000, 'x']);
  a = parseNbdUri('nbd+unix:///vm/disk?socket=/run/nbd.sock');
  assert.deepEqual([a.socket, a.exportName, a.host], ['/run/nbd.sock', 'vm/disk', undefined]);
  a = parseNbdUri('nbds+unix:///?socket=/s&tls-certificates=/etc/pki/nbd&tls-verify-peer=false');
  assert.deepEqual([a.tls, a.tlsCertificates, a.tlsVerifyPeer], [true, '/etc/pki/nbd', false]);
  assert.equal(parseNbdUri('nbds://h/e').tlsVerifyPeer, true);
  assert.ok(isNbdUri('NBD://h/e') && isNbdUri('nbds+unix:///?socket=x') && !isNbdUri('/tmp/nbd://x') && !isNbdUri('disk.qcow2'));
});

test('messages never show a password or TLS file paths', T, () => {
  const a = parseNbdUri('nbds://alice:s3cret@host:1234/exp?tls-certificates=/secret/dir');
  assert.equal(a.display, 'nbds://alice@host:1234/exp');
  assert.equal(safeDisplay('nbd://bob:pw@h/e'), 'nbd://bob@h/e');
  assert.equal(safeDisplay('plain/file.img'), 'plain/file.img');
  assert.equal(parseNbdUri('nbd+unix:///e?socket=/s&tls-certificates=/k').display, 'nbd+unix:///e?socket=/s');
});

test('bad addresses are refused with a reason, never echoing a password', T, () => {
  assert.throws(() => parseNbdUri('nbd+unix:///e'), /needs \?socket=PATH/);
  assert.throws(() => parseNbdUri('nbd+unix://host/e?socket=/s'), /has no host/);
  assert.throws(() => parseNbdUri('nbd:///e'), /no host/);
  assert.throws(() => parseNbdUri('nbds://h/e?tls-psk-file=/k'), /pre-shared key .* not supported yet/);
  assert.throws(() => parseNbdUri('nbd://u:pw@h/%zz'), (e: Error) => /percent-encoding/.test(e.message) && !e.message.includes('pw'));
});
