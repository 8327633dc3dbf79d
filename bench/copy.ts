/**
 * Copy-mode benchmarks: sparsify against qemu-img convert on the same images in the same run,
 * alternating, with medians, ratios and our peak RSS.
 */
import { join } from 'node:path';
import { statSync } from 'node:fs';
import { CLI, timed, median, dropFile, makeExtDisk, makeHugeSparseDisk, sh } from './lib.js';

export interface CompareResult {
  name: string;
  ourSeconds: number[];
  refSeconds: number[];
  reference: string;
  ourPeakRss: number;
  refPeakRss: number;
  ourOutputBytes?: number;
  refOutputBytes?: number;
  target?: string;
}

export interface SoloResult {
  name: string;
  seconds: number[];
  peakRss: number;
  target?: string;
}

function compare(
  name: string,
  runs: number,
  ours: string[],
  refCmd: string,
  ref: string[],
  outputs: { ours: string; ref: string },
  work: string,
  log: (s: string) => void,
  target?: string,
): CompareResult {
  const r: CompareResult = { name, ourSeconds: [], refSeconds: [], reference: `${refCmd} ${ref.join(' ')}`, ourPeakRss: 0, refPeakRss: 0, target };
  for (let i = 0; i < runs; i++) {
    dropFile(outputs.ref);
    const q = timed(refCmd, ref, work);
    r.refSeconds.push(q.seconds);
    r.refPeakRss = Math.max(r.refPeakRss, q.peakRssBytes);
    r.refOutputBytes = statSync(outputs.ref).blocks * 512;
    dropFile(outputs.ref);
    dropFile(outputs.ours);
    const s = timed(process.execPath, [CLI, '-q', ...ours], work);
    r.ourSeconds.push(s.seconds);
    r.ourPeakRss = Math.max(r.ourPeakRss, s.peakRssBytes);
    r.ourOutputBytes = statSync(outputs.ours).blocks * 512;
    dropFile(outputs.ours);
    log(`  ${name} run ${i + 1}: sparsify ${s.seconds.toFixed(2)} s, ${refCmd} ${q.seconds.toFixed(2)} s`);
  }
  return r;
}

export function benchCopy(work: string, opts: { runs: number; log: (s: string) => void; compress: boolean }): { compares: CompareResult[]; solos: SoloResult[] } {
  const { runs, log } = opts;
  const raw = join(work, 'disk4g.img');
  const qcow = join(work, 'disk4g.qcow2');
  log('generating a 4 GiB ext4 disk, 2 GiB of files, garbage in free space...');
  makeExtDisk(raw, work, 4, 2);
  sh('qemu-img', ['convert', '-O', 'qcow2', raw, qcow]);
  const compares: CompareResult[] = [];
  // We fsync the output before renaming it into place; qemu-img does not, so it gets `sync -f` to be as durable.
  const q = join(work, 'q.img');
  compares.push(compare('raw -> raw, 4 GiB half used', runs, [raw, join(work, 'o.img')], 'sh', ['-c', `qemu-img convert -O raw ${raw} ${q} && sync -f ${q}`], { ours: join(work, 'o.img'), ref: q }, work, log, 'time ratio <= 0.6 (vs qemu-img convert + sync -f), peak RSS <= 200 MiB'));
  const qq = join(work, 'q.qcow2');
  compares.push(compare('qcow2 -> qcow2, 4 GiB half used', runs, [qcow, join(work, 'o.qcow2')], 'sh', ['-c', `qemu-img convert -O qcow2 ${qcow} ${qq} && sync -f ${qq}`], { ours: join(work, 'o.qcow2'), ref: qq }, work, log, 'time ratio <= 0.5 (vs qemu-img convert + sync -f), peak RSS <= 256 MiB'));
  if (opts.compress) {
    compares.push(compare('qcow2 -> qcow2 --compress, 4 GiB half used', Math.min(runs, 3), ['--compress', qcow, join(work, 'oc.qcow2')], 'qemu-img', ['convert', '-c', '-O', 'qcow2', qcow, join(work, 'qc.qcow2')], { ours: join(work, 'oc.qcow2'), ref: join(work, 'qc.qcow2') }, work, log, 'time ratio <= 0.5, output <= 1.03x, peak RSS <= 200 MiB'));
  }
  dropFile(raw);
  dropFile(qcow);

  const solos: SoloResult[] = [];
  const huge = join(work, 'huge1t.img');
  log('generating a 1 TiB virtual ext4 disk with 1 GiB used...');
  makeHugeSparseDisk(huge, work, 1, 1);
  const a: SoloResult = { name: '1 TiB virtual, 1 GiB used: --analyze', seconds: [], peakRss: 0, target: '< 10 s' };
  const c: SoloResult = { name: '1 TiB virtual, 1 GiB used: copy', seconds: [], peakRss: 0, target: '< 10 s, RSS <= 200 MiB' };
  for (let i = 0; i < runs; i++) {
    const t1 = timed(process.execPath, [CLI, '--analyze', huge], work);
    a.seconds.push(t1.seconds);
    a.peakRss = Math.max(a.peakRss, t1.peakRssBytes);
    const out = join(work, 'huge-out.img');
    const t2 = timed(process.execPath, [CLI, '-q', huge, out], work);
    dropFile(out);
    c.seconds.push(t2.seconds);
    c.peakRss = Math.max(c.peakRss, t2.peakRssBytes);
    log(`  1 TiB run ${i + 1}: analyze ${t1.seconds.toFixed(2)} s, copy ${t2.seconds.toFixed(2)} s`);
  }
  solos.push(a, c);
  dropFile(huge);
  return { compares, solos };
}

export { median };
