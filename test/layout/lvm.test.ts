/**
 * LVM2 reader against LVM's own view. The fixtures were made by the real LVM tools
 * (test/fixtures/lvm/make-fixtures.sh, loop devices, activation disabled) and come with what
 * lvs / pvs / pvdisplay --maps printed for them. pvck works on plain files, so the label, metadata
 * area and text checks also ask LVM live.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, openSync, writeSync, closeSync, readSync, mkdirSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { tempDir, run, runStatus, haveTool, openRawVolume, fileContent, sha256, garbageFile, repoPath } from '../helpers/fixtures.js';
import { lvmReader } from '../../src/layout/lvm.js';
import { lvmCrc, findLabel, readLabel, readMetadataArea } from '../../src/layout/lvm-label.js';
import { parseLvmText, LvmSection } from '../../src/layout/lvm-text.js';
import { parseVolumeGroup } from '../../src/layout/lvm-vg.js';
import { mapLogicalVolume, type PvPlacement } from '../../src/layout/lvm-map.js';
import { CorruptError } from '../../src/io/errors.js';
import { Volume } from '../../src/layout/volume.js';

const FIX = repoPath('test', 'fixtures', 'lvm');
const MiB = 1 << 20;
const havePvck = haveTool('pvck');
const haveE2 = haveTool('mke2fs') && haveTool('e2fsck') && haveTool('debugfs');
process.env.LVM_SUPPRESS_FD_WARNINGS = '1';

function unpack(name: string, dir: string): string {
  const path = join(dir, `${name}.img`);
  writeFileSync(path, gunzipSync(readFileSync(join(FIX, `${name}.img.gz`))));
  return path;
}

interface OracleSeg {
  lv: string;
  attr: string;
  size: number;
  type: string;
  startPe: number;
  sizePe: number;
  stripes: number;
  stripeSize: number;
  ranges: { pv: string; start: number; end: number }[];
}
interface Oracle {
  segs: OracleSeg[];
  pvs: { pv: string; vg: string; extent: number; peStart: number; peCount: number; alloc: number; free: number }[];
  /** FREE physical extent ranges per PV, inclusive as printed. */
  freeRanges: Map<string, [number, number][]>;
}

/** Parse the lvs / pvs / pvdisplay --maps output recorded when the fixture was made. */
function oracle(name: string): Oracle {
  const text = readFileSync(join(FIX, `${name}.oracle.txt`), 'utf8');
  const out: Oracle = { segs: [], pvs: [], freeRanges: new Map() };
  let section = '';
  let pvName = '';
  let lastRange: [number, number] | null = null;
  for (const line of text.split('\n')) {
    if (line.startsWith('## ')) {
      section = line.slice(3);
      continue;
    }
    if (section === 'lvs' && line.includes('|')) {
      const [lv, attr, size, type, startPe, sizePe, stripes, stripeSize, ranges] = line.split('|');
      out.segs.push({
        lv: lv!.replace(/[[\]]/g, ''),
        attr: attr!,
        size: Number(size),
        type: type!,
        startPe: Number(startPe),
        sizePe: Number(sizePe),
        stripes: Number(stripes),
        stripeSize: Number(stripeSize),
        ranges: (ranges ?? '').split(' ').filter(Boolean).map((r) => {
          const m = /^(.+):(\d+)-(\d+)$/.exec(r)!;
          return { pv: m[1]!, start: Number(m[2]), end: Number(m[3]) + 1 };
        }),
      });
    } else if (section === 'pvs' && line.includes('|')) {
      const [pv, vg, extent, peStart, peCount, alloc, free] = line.split('|');
      out.pvs.push({ pv: pv!, vg: vg!, extent: Number(extent), peStart: Number(peStart), peCount: Number(peCount), alloc: Number(alloc), free: Number(free) });
    } else if (section === 'pvdisplay --maps') {
      const pvm = /^PV Name\s+(\S+)/.exec(line);
      if (pvm) pvName = pvm[1]!;
      const r = /^Physical extent (\d+) to (\d+):/.exec(line);
      if (r) lastRange = [Number(r[1]), Number(r[2])];
      else if (line.trim() === 'FREE' && lastRange) {
        if (!out.freeRanges.has(pvName)) out.freeRanges.set(pvName, []);
        out.freeRanges.get(pvName)!.push(lastRange);
        lastRange = null;
      }
    }
  }
  return out;
}

function pvckHeaders(path: string): Map<string, string> {
  const out = run('pvck', ['--dump', 'headers', path]);
  const m = new Map<string, string>();
  for (const line of out.split('\n')) {
    const r = /^\s*(\S+) (.*)$/.exec(line);
    if (r) m.set(r[1]!, r[2]!);
  }
  return m;
}

/** Expected disk offset of every extent (or stripe chunk) of an LV on whole-disk PVs at `bases`. */
function expectLvMapping(lvVolume: Volume, segs: OracleSeg[], ext: number, peStart: number, bases: Record<string, number>): void {
  let checked = 0;
  for (const s of segs) {
    const lvBase = s.startPe * ext;
    const areaBytes = (s.sizePe / s.stripes) * ext;
    const chunk = s.stripes > 1 ? s.stripeSize : areaBytes;
    for (let c = 0; c * chunk < s.sizePe * ext; c++) {
      const stripe = c % s.stripes;
      const row = Math.floor(c / s.stripes);
      const r = s.ranges[stripe]!;
      const want = bases[r.pv]! + peStart + r.start * ext + row * chunk;
      for (const within of [0, chunk - 512]) {
        const [piece] = lvVolume.mapRange(lvBase + c * chunk + within, 512);
        assert.equal(piece!.diskOffset, want + within, `${s.lv} chunk ${c} (+${within}) maps to ${r.pv}:${r.start}+${row * chunk}`);
        checked++;
      }
    }
  }
  assert.ok(checked > 0);
}

test('lvmCrc is LVM calc_crc: it reproduces the label, MDA header and text checksums pvck prints', { timeout: 300_000, skip: !havePvck && 'pvck (lvm2) not installed' }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    for (const name of ['basic', 'wrap']) {
      const path = unpack(name, dir);
      const h = pvckHeaders(path);
      const buf = readFileSync(path);
      assert.equal(lvmCrc(buf.subarray(512 + 20, 1024)), Number(h.get('label_header.crc')));
      const mda = Number(h.get('mda_header_1.start'));
      assert.equal(lvmCrc(buf.subarray(mda + 4, mda + 512)), Number(h.get('mda_header_1.checksum')));

      const { volume, close } = await openRawVolume(path);
      try {
        const label = await readLabel(volume, (await findLabel(volume))!);
        assert.ok(label.crcOk);
        assert.equal(label.uuid, h.get('pv_header.pv_uuid'));
        assert.equal(label.deviceSize, Number(h.get('pv_header.device_size')));
        assert.deepEqual(label.metadataAreas, [{ offset: mda, size: Number(h.get('mda_header_1.size')) }]);
        const r = await readMetadataArea(volume, label.metadataAreas[0]!);
        assert.equal(r.kind, 'text');
        // pvck writes the committed text it read (and checked) to a file: ours must be identical.
        const dumped = join(dir, `${name}.meta`);
        run('pvck', ['--dump', 'metadata', '-f', dumped, path]);
        if (r.kind === 'text') assert.equal(r.meta.text, readFileSync(dumped, 'utf8').replace(/\0+$/, ''));
      } finally {
        await close();
      }
    }
    // The wrap fixture's committed copy really does straddle the end of the circular buffer.
    assert.match(readFileSync(join(FIX, 'wrap.headers.txt'), 'utf8'), /commit wrapped/);
  } finally {
    cleanup();
  }
});

for (const name of ['basic', 'wrap', 'special']) {
  test(`${name}: LVs and free extents match lvs / pvs / pvdisplay --maps`, async () => {
    const { dir, cleanup } = tempDir();
    const o = oracle(name);
    const pv = o.pvs[0]!;
    const { volume, close } = await openRawVolume(unpack(name, dir));
    try {
      assert.equal(await lvmReader.probe(volume), true);
      const a = await lvmReader.analyze(volume);
      assert.equal(a.type, 'lvm2');
      assert.equal(a.details?.vg, pv.vg);
      assert.equal(a.details?.extent_size, pv.extent);
      assert.equal(a.details?.pe_start, pv.peStart);
      assert.equal(a.details?.pe_count, pv.peCount);

      // Children: exactly the plain, writable LVs (lvs attr "-wi", not r/o), mapped extent by extent.
      const plain = [...new Set(o.segs.filter((s) => /^-w/.test(s.attr) && s.type === 'linear').map((s) => s.lv))];
      assert.deepEqual(a.children.map((c) => c.volume.name).sort(), plain.map((l) => `/dev/${pv.vg}/${l}`).sort());
      for (const c of a.children) {
        const segs = o.segs.filter((s) => `/dev/${pv.vg}/${s.lv}` === c.volume.name);
        assert.equal(c.volume.size, segs[0]!.size);
        assert.equal(c.details?.size, segs[0]!.size);
        expectLvMapping(c.volume, segs, pv.extent, pv.peStart, { PV: 0 });
      }

      // Free: pvs pv_free bytes, at the FREE ranges pvdisplay --maps lists.
      assert.equal(a.free.total(), pv.free);
      const want = (o.freeRanges.get('PV') ?? []).map(([s, e]) => ({ start: pv.peStart + s * pv.extent, end: pv.peStart + (e + 1) * pv.extent }));
      assert.deepEqual(a.free.toArray(), want);

      // What is kept whole, and why.
      const ro = o.segs.filter((s) => /^-r/.test(s.attr));
      for (const s of ro) assert.ok(a.info?.some((i) => i.includes(`/dev/${pv.vg}/${s.lv}`) && i.includes('read-only')), `info names ${s.lv}`);
      const special = o.segs.filter((s) => !s.attr.startsWith('-') && !s.lv.includes('_t'));
      for (const s of special) assert.ok(a.warnings.some((w) => w.includes(`/dev/${pv.vg}/${s.lv} `)), `a warning names ${s.lv}: ${a.warnings.join(' | ')}`);
      if (special.length === 0) assert.deepEqual(a.warnings, []);
    } finally {
      await close();
      cleanup();
    }
  });
}

test('special: snapshot origin/cow and thin pool/thin LVs are named in warnings', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  const { volume, close } = await openRawVolume(unpack('special', dir));
  try {
    const a = await lvmReader.analyze(volume);
    const w = a.warnings.join('\n');
    assert.match(w, /\/dev\/svg\/orig is the origin of snapshot snap/);
    assert.match(w, /\/dev\/svg\/snap is a snapshot of orig/);
    assert.match(w, /\/dev\/svg\/pool is a thin-pool LV/);
    assert.match(w, /\/dev\/svg\/thin1 is a thin LV/);
    assert.doesNotMatch(w, /pool_t|snapshot0/);
  } finally {
    await close();
    cleanup();
  }
});

test('basic: ext4 inside linear LVs reads back through the LV volumes (e2fsck + debugfs)', { timeout: 300_000, skip: !haveE2 && 'e2fsprogs not installed' }, async () => {
  const { dir, cleanup } = tempDir();
  const o = oracle('basic');
  const pv = o.pvs[0]!;
  const path = unpack('basic', dir);
  try {
    // Garbage over every allocated extent, then ext4 written at lv1's offset as lvs reports it.
    const fd = openSync(path, 'r+');
    for (const s of o.segs) for (const r of s.ranges) writeSync(fd, randomBytes((r.end - r.start) * pv.extent), 0, (r.end - r.start) * pv.extent, pv.peStart + r.start * pv.extent);
    closeSync(fd);
    const src = join(dir, 'src');
    mkdirSync(src);
    writeFileSync(join(src, 'a.bin'), fileContent('lv1', 300_000));
    const lv1 = o.segs.find((s) => s.lv === 'lv1')!;
    run('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-E', `offset=${pv.peStart + lv1.ranges[0]!.start * pv.extent}`, '-d', src, path, `${lv1.size / 1024}k`]);

    // lv2 has two segments: build its ext4 in a file, scatter it where lvs says the extents are.
    const lv2File = join(dir, 'lv2.img');
    const lv2 = o.segs.filter((s) => s.lv === 'lv2');
    garbageFile(lv2File, lv2[0]!.size);
    writeFileSync(join(src, 'b.bin'), fileContent('lv2', 500_000));
    run('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '1024', '-d', src, lv2File]);
    const lv2Data = readFileSync(lv2File);
    const fd2 = openSync(path, 'r+');
    for (const s of lv2) writeSync(fd2, lv2Data, s.startPe * pv.extent, s.sizePe * pv.extent, pv.peStart + s.ranges[0]!.start * pv.extent);
    closeSync(fd2);

    const { volume, close } = await openRawVolume(path);
    try {
      const a = await lvmReader.analyze(volume);
      const byName = new Map(a.children.map((c) => [c.volume.name, c.volume]));
      const got2 = await byName.get('/dev/tvg/lv2')!.readAt(0, lv2Data.length);
      assert.equal(sha256(got2), sha256(lv2Data));
      const out1 = join(dir, 'lv1.out');
      writeFileSync(out1, await byName.get('/dev/tvg/lv1')!.readAt(0, lv1.size));
      const fsck = runStatus('e2fsck', ['-fn', out1]);
      assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
      const cat = join(dir, 'a.out');
      run('debugfs', ['-R', `dump /a.bin ${cat}`, out1]);
      assert.equal(sha256(readFileSync(cat)), sha256(fileContent('lv1', 300_000)));
    } finally {
      await close();
    }
  } finally {
    cleanup();
  }
});

test('multi: a PV of a multi-PV VG is kept whole; with both PVs the striped and spanning LVs map as lvs says', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  const o = oracle('multi');
  try {
    // Both PVs side by side in one image, as two partitions would be.
    const a = readFileSync(unpack('multi-a', dir));
    const b = readFileSync(unpack('multi-b', dir));
    const both = join(dir, 'both.img');
    writeFileSync(both, Buffer.concat([a, b]));
    const { volume, close } = await openRawVolume(both);
    try {
      const pvA = volume.slice('/dev/sda1', 0, a.length);
      const pvB = volume.slice('/dev/sda2', a.length, b.length);
      for (const pv of [pvA, pvB]) {
        const r = await lvmReader.analyze(pv);
        assert.deepEqual(r.children, []);
        assert.equal(r.free.total(), 0);
        assert.match(r.warnings.join('\n'), /VG mvg spans 2 physical volumes/);
      }
      const vg = await (async () => {
        const label = await readLabel(pvA, (await findLabel(pvA))!);
        const m = await readMetadataArea(pvA, label.metadataAreas[0]!);
        assert.equal(m.kind, 'text');
        return parseVolumeGroup(parseLvmText(m.kind === 'text' ? m.meta.text : ''));
      })();
      const placements = new Map<string, PvPlacement>();
      const bases: Record<string, number> = {};
      for (const [pvVol, oname] of [[pvA, 'PVA'], [pvB, 'PVB']] as const) {
        const label = await readLabel(pvVol, (await findLabel(pvVol))!);
        const info = vg.pvs.find((p) => p.uuid === label.uuid)!;
        placements.set(info.key, { volume: pvVol, info });
        bases[oname] = pvVol.diskStart;
      }
      const pvo = o.pvs[0]!;
      for (const lvName of ['stripe', 'span']) {
        const segs = mapLogicalVolume(vg, vg.lvs.find((l) => l.name === lvName)!, placements);
        assert.ok(Array.isArray(segs), String(segs));
        const lv = new Volume(volume.image, `/dev/mvg/${lvName}`, segs);
        const oseg = o.segs.filter((s) => s.lv === lvName);
        assert.equal(lv.size, oseg[0]!.size);
        expectLvMapping(lv, oseg, pvo.extent, pvo.peStart, bases);
      }
      assert.ok(o.segs.some((s) => s.lv === 'stripe' && s.stripes === 2 && s.stripeSize === 65536));
    } finally {
      await close();
    }
  } finally {
    cleanup();
  }
});

/** Patch bytes of the committed metadata text in place and fix the rlocn and MDA header checksums. */
function patchMetadata(path: string, edit: (text: string) => string): void {
  const buf = readFileSync(path);
  const mda = 4096;
  const off = Number(buf.readBigUInt64LE(mda + 40));
  const size = Number(buf.readBigUInt64LE(mda + 48));
  const text = buf.toString('latin1', mda + off, mda + off + size);
  const edited = Buffer.from(edit(text), 'latin1');
  assert.equal(edited.length, size, 'edits keep the length');
  edited.copy(buf, mda + off);
  buf.writeUInt32LE(lvmCrc(edited), mda + 56);
  buf.writeUInt32LE(lvmCrc(buf.subarray(mda + 4, mda + 512)), mda);
  writeFileSync(path, buf);
}

function flipByte(path: string, offset: number): void {
  const fd = openSync(path, 'r+');
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, offset);
  b[0] = b[0]! ^ 0x20;
  writeSync(fd, b, 0, 1, offset);
  closeSync(fd);
}

async function analyzeFile(path: string) {
  const { volume, close } = await openRawVolume(path);
  try {
    return await lvmReader.analyze(volume);
  } finally {
    await close();
  }
}

function assertKeptWhole(a: Awaited<ReturnType<typeof analyzeFile>>, why: RegExp): void {
  assert.deepEqual(a.children, []);
  assert.equal(a.free.total(), 0);
  assert.match(a.warnings.join('\n'), why);
}

test('damage keeps the PV whole, and LVM agrees the damage is there', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const text = unpack('basic', dir);
    const textAt = 4096 + Number(readFileSync(text).readBigUInt64LE(4096 + 40));
    flipByte(text, textAt + 200);
    assertKeptWhole(await analyzeFile(text), /metadata text at .* has a bad checksum/);
    if (havePvck) assert.notEqual(runStatus('pvck', [text]).status, 0, 'pvck also rejects the metadata');

    const label = unpack('basic', dir);
    flipByte(label, 512 + 40);
    assertKeptWhole(await analyzeFile(label), /label at 0x200 has a bad checksum/);
    if (havePvck) {
      const r = runStatus('pvck', ['--dump', 'headers', label]);
      assert.match(r.stdout + r.stderr, /CHECK: label_header.crc expected/);
    }

    const mdah = unpack('basic', dir);
    flipByte(mdah, 4096 + 100);
    assertKeptWhole(await analyzeFile(mdah), /metadata area header at 0x1000 has a bad checksum/);

    // Metadata that LVM's checksum accepts but that places an LV past the PV's extents.
    const past = unpack('basic', dir);
    patchMetadata(past, (t) => t.replace('pe_count = 31', 'pe_count = 15'));
    // pvck reads it without complaint: our checksums are LVM's.
    if (havePvck) assert.match(run('pvck', ['--dump', 'metadata', past]), /crc 0x[0-9a-f]+ # vgname tvg/);
    assertKeptWhole(await analyzeFile(past), /uses extents .* of pv0, which has only 15/);

    // Two LVs on the same extents.
    const overlap = unpack('basic', dir);
    patchMetadata(overlap, (t) => t.replace(/"pv0", 14/, '"pv0", 12'));
    assertKeptWhole(await analyzeFile(overlap), /both claim extent 12/);

    // Unparseable text.
    const garbled = unpack('basic', dir);
    patchMetadata(garbled, (t) => t.replace('logical_volumes {', 'logical_volumes ['));
    assertKeptWhole(await analyzeFile(garbled), /metadata text line \d+/);

    // The PV cut short: its extents run past the end of the volume.
    const { volume, close } = await openRawVolume(unpack('basic', dir));
    try {
      const a = await lvmReader.analyze(volume.slice('/dev/sda1', 0, 20 * MiB));
      assertKeptWhole(a, /past the end of the volume/);
    } finally {
      await close();
    }
  } finally {
    cleanup();
  }
});

test('random damage to checksummed metadata never crashes or hangs', { timeout: 300_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const base = unpack('wrap', dir);
    const orig = readFileSync(base);
    const mda = 4096;
    const off = Number(orig.readBigUInt64LE(mda + 40));
    const size = Number(orig.readBigUInt64LE(mda + 48));
    const msize = Number(orig.readBigUInt64LE(mda + 32));
    // Bytes of the (wrapped) text in order, as positions in the file.
    const pos = (i: number) => (off + i < msize ? mda + off + i : mda + 512 + (off + i - msize));
    let seed = 12345;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
    const syntax = Buffer.from('{}[]="#,\n 0-');
    for (let iter = 0; iter < 60; iter++) {
      const buf = Buffer.from(orig);
      for (let k = 0; k < 3; k++) buf[pos(rand(size - 1))] = rand(2) ? syntax[rand(syntax.length)]! : rand(256);
      const text = Buffer.alloc(size);
      for (let i = 0; i < size; i++) text[i] = buf[pos(i)]!;
      buf.writeUInt32LE(lvmCrc(text), mda + 56);
      buf.writeUInt32LE(lvmCrc(buf.subarray(mda + 4, mda + 512)), mda);
      writeFileSync(base, buf);
      try {
        const a = await analyzeFile(base);
        // Whatever survived parsing must still be self-consistent.
        for (const c of a.children) assert.ok(c.volume.size > 0);
      } catch (e) {
        assert.ok(e instanceof CorruptError, String(e));
      }
    }
  } finally {
    cleanup();
  }
});

test('metadata text parser: sections, arrays, strings, comments, and bounds', { timeout: 300_000 }, () => {
  const t = parseLvmText('a {\n  b = "x \\"q\\" \\\\ y" # c\n  n = -12\n  f = 1.5\n  arr = [ "pv0", 0, "pv1", 33 ]\n  e = []\n  inner { k = 1 }\n}\nversion = 1\n');
  const a = t.section('a')!;
  assert.equal(a.string('b'), 'x "q" \\ y');
  assert.equal(a.get('n'), -12);
  assert.equal(a.get('f'), 1.5);
  assert.deepEqual(a.get('arr'), ['pv0', 0, 'pv1', 33]);
  assert.deepEqual(a.get('e'), []);
  assert.ok(a.section('inner') instanceof LvmSection);
  assert.equal(t.count('version'), 1);
  for (const bad of ['a {', 'a = "x', 'a = [1, [2]]', '}', 'a = 1 a = 2', 'a = 12x', 'a b', '= 1']) {
    assert.throws(() => parseLvmText(bad), CorruptError, bad);
  }
  assert.throws(() => parseLvmText('a {'.repeat(100) + '}'.repeat(100)), /nested deeper/);
});
