/**
 * Encrypted test disks made and opened by the real tools, never by our own code:
 * - LUKS2: cryptsetup encrypts a plaintext image offline (`reencrypt --encrypt`, userspace crypto,
 *   no device-mapper needed), with any PBKDF, cipher and sector size.
 * - LUKS1: qemu-img converts a plaintext image to its `luks` format (LUKS1, PBKDF2).
 * - The oracle: cryptsetup takes the volume key from the image's own header with the passphrase
 *   (`luksDump --dump-volume-key`), and decrypts a copy of the payload in userspace under a
 *   detached header built with that key (`reencrypt --decrypt`). The plaintext is then checked with
 *   e2fsck and file checksums. This kernel has no dm-crypt, and the oracle needs none.
 */
import { join } from 'node:path';
import { closeSync, openSync, readSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { run, runStatus } from './fixtures.js';
import { extract } from './ext-fixtures.js';

export const PASSPHRASE = 'correct horse battery staple';

export interface Luks2Spec {
  pbkdf: 'pbkdf2' | 'argon2i' | 'argon2id';
  /** PBKDF2 hash (default sha256). */
  hash?: 'sha1' | 'sha256';
  cipher?: string;
  keyBits?: number;
  sectorSize?: number;
  passphrase?: string;
}

/** Bytes cryptsetup puts before the data when given `--reduce-device-size` LUKS2_SLACK: half of it. */
export const LUKS2_SLACK = 4 << 20;

/**
 * Encrypt `path` in place as LUKS2 (cryptsetup's offline encryption). The data moves up by
 * LUKS2_SLACK / 2 and the last LUKS2_SLACK bytes of the plaintext are not kept: leave them unused.
 */
export function encryptLuks2(path: string, spec: Luks2Spec): void {
  const args = ['reencrypt', '--encrypt', '-q', '--type', 'luks2', '--reduce-device-size', String(LUKS2_SLACK), '--key-file', '-'];
  args.push('--cipher', spec.cipher ?? 'aes-xts-plain64', '--key-size', String(spec.keyBits ?? 512), '--sector-size', String(spec.sectorSize ?? 512));
  if (spec.pbkdf === 'pbkdf2') args.push('--pbkdf', 'pbkdf2', '--hash', spec.hash ?? 'sha256', '--pbkdf-force-iterations', '1000');
  else args.push('--pbkdf', spec.pbkdf, '--pbkdf-memory', '8192', '--pbkdf-parallel', '1', '--pbkdf-force-iterations', '4');
  run('cryptsetup', [...args, path], { input: spec.passphrase ?? PASSPHRASE });
}

export interface Luks1Spec {
  mode: 'xts-plain64' | 'cbc-essiv:sha256';
  hash: 'sha1' | 'sha256';
  passphrase?: string;
}

/** A LUKS1 image `out` holding the plaintext image `plain` (qemu-img's luks format). */
export function encryptLuks1(plain: string, out: string, spec: Luks1Spec): void {
  const [mode, ivgen] = spec.mode === 'xts-plain64' ? ['xts', 'ivgen-alg=plain64'] : ['cbc', 'ivgen-alg=essiv,ivgen-hash-alg=sha256'];
  const o = `key-secret=sec0,cipher-alg=aes-256,cipher-mode=${mode},${ivgen},hash-alg=${spec.hash},iter-time=10`;
  const args = ['convert', '-f', 'raw', '-O', 'luks', '--object', `secret,id=sec0,data=${spec.passphrase ?? PASSPHRASE}`, '-o', o, plain, out];
  // qemu times its first 32768 PBKDF2 rounds by the thread's CPU time, which counts in scheduler
  // ticks: a few ms of work can read as 0 and it gives up ("Unable to get accurate CPU usage").
  for (let attempt = 1; ; attempt++) {
    const r = runStatus('qemu-img', args);
    if (r.status === 0) return;
    if (attempt === 3 || !r.stderr.includes('Unable to get accurate CPU usage')) throw new Error(`qemu-img ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  }
}

/** `cryptsetup luksDump` of an image (the header as cryptsetup sees it), without the file's name. */
export function luksDump(img: string): string {
  return run('cryptsetup', ['luksDump', img]).replace(` for ${img}`, '');
}

/** Where the payload is and how it is encrypted, as cryptsetup reports it. */
function payloadOf(img: string): { offset: number; cipher: string; sectorSize: number } {
  const dump = luksDump(img);
  const v1 = /Payload offset:\s*(\d+)/.exec(dump);
  if (v1) {
    const name = /Cipher name:\s*(\S+)/.exec(dump)![1];
    const mode = /Cipher mode:\s*(\S+)/.exec(dump)![1];
    return { offset: Number(v1[1]) * 512, cipher: `${name}-${mode}`, sectorSize: 512 };
  }
  const seg = /Data segments:[\s\S]*?offset:\s*(\d+)[\s\S]*?cipher:\s*(\S+)[\s\S]*?sector:\s*(\d+)/.exec(dump)!;
  return { offset: Number(seg[1]), cipher: seg[2]!, sectorSize: Number(seg[3]) };
}

/**
 * Decrypt the payload of LUKS image `img` into the new file `out`, with cryptsetup alone: the
 * volume key comes from `img`'s header and passphrase, so a damaged header or key fails here.
 */
export function decryptWithCryptsetup(img: string, out: string, workDir: string, passphrase = PASSPHRASE): void {
  const mk = join(workDir, `vk-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const hdr = `${mk}.hdr`;
  try {
    run('cryptsetup', ['luksDump', '-q', '--dump-volume-key', '--volume-key-file', mk, '--key-file', '-', img], { input: passphrase });
    const keyBits = String(Number(run('stat', ['-c', '%s', mk]).trim()) * 8);
    const { offset, cipher, sectorSize } = payloadOf(img);
    const size = Number(run('stat', ['-c', '%s', img]).trim()) - offset;
    extract(img, offset, size, out);
    const fd = openSync(hdr, 'w');
    ftruncateSync(fd, 16 << 20);
    closeSync(fd);
    run('cryptsetup', ['luksFormat', '-q', '--type', 'luks2', '--header', hdr, '--offset', '0', '--volume-key-file', mk, '--key-size', keyBits,
      '--cipher', cipher, '--sector-size', String(sectorSize), '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file', '-', out], { input: 'x' });
    run('cryptsetup', ['reencrypt', '--decrypt', '-q', '--force-offline-reencrypt', '--header', hdr, '--key-file', '-', out], { input: 'x' });
  } finally {
    runStatus('rm', ['-f', mk, hdr]);
  }
}

/** qemu-img's own decryption of a LUKS1 image (a second, independent oracle). */
export function decryptWithQemu(img: string, out: string, passphrase = PASSPHRASE): void {
  run('qemu-img', ['convert', '--object', `secret,id=sec0,data=${passphrase}`, '--image-opts', `driver=luks,key-secret=sec0,file.filename=${img}`, '-O', 'raw', out]);
}

/** ext4 free space as its own tool reports it: dumpe2fs's free blocks times the block size. */
export function extFreeBytes(img: string): number {
  const h = run('dumpe2fs', ['-h', img]);
  return Number(/Free blocks:\s*(\d+)/.exec(h)![1]) * Number(/Block size:\s*(\d+)/.exec(h)![1]);
}

// --- hostile headers, for the bad-input tests ------------------------------------------------------

/** Rewrite the JSON metadata of both LUKS2 header copies and fix their checksums, as a forger would. */
export function rewriteLuks2Json(img: string, mutate: (json: Record<string, unknown>) => void): void {
  const fd = openSync(img, 'r+');
  try {
    const bin = Buffer.alloc(4096);
    readSync(fd, bin, 0, 4096, 0);
    const hdrSize = Number(bin.readBigUInt64BE(8));
    for (const at of [0, hdrSize]) {
      const copy = Buffer.alloc(hdrSize);
      readSync(fd, copy, 0, hdrSize, at);
      const area = copy.subarray(4096);
      const json = JSON.parse(area.subarray(0, area.indexOf(0)).toString()) as Record<string, unknown>;
      mutate(json);
      area.fill(0);
      Buffer.from(JSON.stringify(json)).copy(area);
      copy.fill(0, 448, 512);
      createHash('sha256').update(copy).digest().copy(copy, 448);
      writeSync(fd, copy, 0, hdrSize, at);
    }
  } finally {
    closeSync(fd);
  }
}

/** Write `text` to a new file with `mode`, for key files. */
export function writeSecretFile(path: string, text: string, mode = 0o600): void {
  writeFileSync(path, text, { mode });
}

// --- LVM, for LVM on LUKS and LUKS on LVM -----------------------------------------------------------

/** Can this machine build LVM PVs (root, a free loop device)? A reason to skip, or false. */
export function lvmSkipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root for a loop device (the LVM tools need a block device)';
  if (runStatus('losetup', ['-f']).status !== 0) return 'no free loop device';
  return false;
}

/**
 * Make `path` (an existing file) an LVM PV with VG `vg` and one LV `lv` filling it, without
 * device-mapper (activation off, as test/fixtures/lvm/make-upstream.sh does). Returns where the LV
 * lies in the file: it is linear from the PV's first extent.
 */
export function makePvWithLv(path: string, vg: string, lv: string): { lvOffset: number; lvSize: number } {
  const loop = run('losetup', ['-f', '--show', path]).trim();
  try {
    const c = `devices{use_devicesfile=0 filter=["a|^${loop}$|","r|.*|"] obtain_device_list_from_udev=0} activation{udev_sync=0 udev_rules=0} global{activation=0} backup{backup=0 archive=0}`;
    const env = { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' };
    const lvm = (args: string[]): string => execFileSync('lvm', args, { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    lvm(['pvcreate', '--config', c, '-q', loop]);
    lvm(['vgcreate', '--config', c, '-q', vg, loop]);
    lvm(['lvcreate', '--config', c, '-q', '-an', '--zero', 'n', '-l', '100%FREE', '-n', lv, vg]);
    const lvOffset = Number(lvm(['pvs', '--config', c, '--noheadings', '--units', 'b', '--nosuffix', '-o', 'pe_start', loop]).trim());
    const lvSize = Number(lvm(['lvs', '--config', c, '--noheadings', '--units', 'b', '--nosuffix', '-o', 'lv_size', `${vg}/${lv}`]).trim());
    return { lvOffset, lvSize };
  } finally {
    run('losetup', ['-d', loop]);
  }
}
