/**
 * Encrypted disks: what sparsify and virt-sparsify give back with the same key, in the same run.
 * Three GPT disks (ext4 on LUKS2 argon2id, LVM on LUKS1 pbkdf2, LUKS2 on an LVM LV), each with
 * deleted data in the ext4's free space. For each: the ext4's free space as dumpe2fs reports it,
 * and the bytes each tool gives back to the host in copy and in-place mode. When guestfish is
 * installed, every sparsify output is also opened by libguestfs with the key, fsck'd and its files
 * checksummed against the input's (bench/luks-guestfish-check.sh).
 *
 *   npm run build && node dist/bench/luks.js     (needs root for the LVM loop device; slow: TCG)
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { garbageFile } from '../test/helpers/fixtures.js';
import { makeExtImage } from '../test/helpers/ext-fixtures.js';
import { placeAt } from '../test/helpers/disk-builder.js';
import { PASSPHRASE, LUKS2_SLACK, encryptLuks1, encryptLuks2, extFreeBytes, makePvWithLv } from '../test/helpers/luks-fixtures.js';

process.env['LIBGUESTFS_BACKEND'] ??= 'direct';
process.env['LIBGUESTFS_BACKEND_SETTINGS'] ??= 'force_tcg';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = HERE.includes('/dist/') ? join(HERE, '..', '..') : join(HERE, '..');
const CLI = join(ROOT, 'bin', 'sparsify.js');
const CHECK = join(ROOT, 'bench', 'luks-guestfish-check.sh');
const MiB = 1 << 20;

const allocated = (p: string): number => statSync(p).blocks * 512;
const have = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

function run(cmd: string, args: string[]): { seconds: number; output: string } {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}):\n${output.slice(-3000)}`);
  return { seconds: (performance.now() - t0) / 1000, output };
}

interface Case {
  name: string;
  disk: string;
  /** The encrypted device and the ext4 inside, as both tools (and guestfish) name them. */
  luksDevice: string;
  fsDevice: string;
  fsFree: number;
}

/** 24 MiB kept, 48 MiB written and deleted (its data stays in free space, as a guest leaves it). */
function ext4(path: string, size: number, work: string): number {
  const files = { 'data/a.bin': randomBytes(24 * MiB), 'etc/b.txt': Buffer.from('kept\n'), 'gone.bin': randomBytes(48 * MiB) };
  makeExtImage(path, { type: 'ext4', sizeMiB: size / MiB, files, remove: ['gone.bin'], mkfsArgs: ['-b', '4096'] }, work, true);
  return extFreeBytes(path);
}

/** A GPT disk whose partition 1 (at 1 MiB) holds `content`. */
function gptDisk(path: string, content: string): void {
  const size = statSync(content).size;
  writeFileSync(path, '');
  truncateSync(path, size + 2 * MiB);
  run('sgdisk', ['-o', '-n', `1:2048:+${size / 1024}K`, path]);
  placeAt(path, content, MiB);
}

function buildCases(work: string): Case[] {
  const cases: Case[] = [];
  // ext4 on LUKS2 (argon2id).
  const l2 = join(work, 'l2.img');
  const free2 = ext4(l2, 128 * MiB, work);
  truncateSync(l2, 128 * MiB + LUKS2_SLACK);
  encryptLuks2(l2, { pbkdf: 'argon2id' });
  cases.push({ name: 'ext4 on LUKS2 (argon2id)', disk: join(work, 'disk-l2.img'), luksDevice: '/dev/sda1', fsDevice: '/dev/mapper/crypt', fsFree: free2 });
  gptDisk(cases[0]!.disk, l2);
  // LVM on LUKS1 (pbkdf2, qemu-img).
  const pv = join(work, 'pv.img');
  garbageFile(pv, 136 * MiB);
  const lv = makePvWithLv(pv, 'vgbench', 'root');
  const fs = join(work, 'root.img');
  const free1 = ext4(fs, lv.lvSize, work);
  placeAt(pv, fs, lv.lvOffset);
  const l1 = join(work, 'l1.img');
  encryptLuks1(pv, l1, { mode: 'xts-plain64', hash: 'sha256' });
  cases.push({ name: 'LVM on LUKS1 (pbkdf2)', disk: join(work, 'disk-l1.img'), luksDevice: '/dev/sda1', fsDevice: '/dev/vgbench/root', fsFree: free1 });
  gptDisk(cases[1]!.disk, l1);
  // LUKS2 on an LVM LV.
  const pv2 = join(work, 'pv2.img');
  garbageFile(pv2, 140 * MiB);
  const lv2 = makePvWithLv(pv2, 'vgcrypt', 'secret');
  const inner = join(work, 'inner.img');
  const free3 = ext4(inner, Math.floor((lv2.lvSize - LUKS2_SLACK) / (4 * MiB)) * 4 * MiB, work);
  truncateSync(inner, lv2.lvSize);
  encryptLuks2(inner, { pbkdf: 'argon2id' });
  placeAt(pv2, inner, lv2.lvOffset);
  cases.push({ name: 'LUKS2 on an LVM LV', disk: join(work, 'disk-lv.img'), luksDevice: '/dev/vgcrypt/secret', fsDevice: '/dev/mapper/crypt', fsFree: free3 });
  gptDisk(cases[2]!.disk, pv2);
  return cases;
}

interface Row {
  name: string;
  fsFree: number;
  ours: { copy: number; inPlace: number; copySeconds: number; inPlaceSeconds: number };
  virt?: { copy: number; inPlace: number; copySeconds: number; inPlaceSeconds: number };
  guestfish?: string;
}

/** Bytes `tool` gives back in copy and in-place mode, and the outputs (kept for the checks). */
function measure(cmd: string, pre: string[], c: Case, keyFile: string, work: string, tag: string) {
  const key = ['--key', `${c.luksDevice}:file:${keyFile}`];
  const out = join(work, `${tag}-copy.img`);
  const copy = run(cmd, [...pre, '--format', 'raw', ...key, c.disk, out]);
  const inplace = join(work, `${tag}-inplace.img`);
  run('cp', ['--sparse=always', c.disk, inplace]);
  const ip = run(cmd, [...pre, '--format', 'raw', '--in-place', ...key, inplace]);
  return {
    result: { copy: allocated(c.disk) - allocated(out), inPlace: allocated(c.disk) - allocated(inplace), copySeconds: copy.seconds, inPlaceSeconds: ip.seconds },
    outputs: [out, inplace],
  };
}

export async function benchLuks(opts: { log: (s: string) => void }): Promise<Row[]> {
  const { log } = opts;
  const work = mkdtempSync(join(process.env['BENCH_DIR'] ?? tmpdir(), 'sparsify-luks-bench-'));
  const rows: Row[] = [];
  try {
    const keyFile = join(work, 'key');
    writeFileSync(keyFile, `${PASSPHRASE}\n`, { mode: 0o600 });
    log('luks: building the disks');
    for (const c of buildCases(work)) {
      log(`luks: ${c.name}: ${allocated(c.disk)} bytes allocated, ext4 free ${c.fsFree}`);
      const ours = measure(process.execPath, [CLI], c, keyFile, work, 'ours');
      const row: Row = { name: c.name, fsFree: c.fsFree, ours: ours.result };
      if (have('virt-sparsify')) {
        const virt = measure('virt-sparsify', [], c, keyFile, work, 'virt');
        row.virt = virt.result;
        for (const f of virt.outputs) rmSync(f);
      }
      if (have('guestfish')) {
        const listing = (img: string) => run('bash', [CHECK, img, c.luksDevice, c.fsDevice, keyFile]).output;
        const expected = listing(c.disk);
        const verdicts = ours.outputs.map((o) => {
          const got = listing(o);
          return got === expected && /fsck: 0\b/.test(got) ? 'same files, fsck clean' : `DIFFERS:\n${got}\nexpected:\n${expected}`;
        });
        row.guestfish = `copy: ${verdicts[0]}; in-place: ${verdicts[1]}`;
      }
      for (const f of ours.outputs) rmSync(f);
      log(`luks: ${JSON.stringify(row)}`);
      rows.push(row);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return rows;
}

export function luksTable(rows: Row[]): string[] {
  const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;
  const pct = (n: number, of: number) => `${((100 * n) / of).toFixed(1)}%`;
  const lines = [
    '| encrypted disk | ext4 free (dumpe2fs) | sparsify copy | sparsify in-place | virt-sparsify copy | virt-sparsify in-place | guestfish check of sparsify outputs |',
    '|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    const v = r.virt;
    lines.push(
      `| ${r.name} | ${mib(r.fsFree)} | ${mib(r.ours.copy)} (${pct(r.ours.copy, r.fsFree)}, ${r.ours.copySeconds.toFixed(1)} s) | ${mib(r.ours.inPlace)} (${pct(r.ours.inPlace, r.fsFree)}, ${r.ours.inPlaceSeconds.toFixed(1)} s) | ` +
        (v ? `${mib(v.copy)} (${pct(v.copy, r.fsFree)}, ${v.copySeconds.toFixed(1)} s) | ${mib(v.inPlace)} (${pct(v.inPlace, r.fsFree)}, ${v.inPlaceSeconds.toFixed(1)} s)` : 'not installed | not installed') +
        ` | ${r.guestfish ?? 'guestfish not installed'} |`,
    );
  }
  return lines;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  benchLuks({ log: (s) => console.log(s) })
    .then((rows) => console.log('\n' + luksTable(rows).join('\n')))
    .catch((e: unknown) => {
      console.error(e instanceof Error ? e.stack : String(e));
      process.exit(1);
    });
}
