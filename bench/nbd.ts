/**
 * Copy from an NBD export (`--only nbd`): the 4 GiB half-used ext4 disk (garbage in its free
 * space, so every byte is allocated) served by qemu-nbd over a Unix socket, copied to a local
 * image by sparsify (qcow2), nbdcopy (raw: it copies every allocated byte) and qemu-img convert
 * (qcow2), alternating, from the same URI in the same run. nbdcopy is timed with --flush (its output
 * made durable, as ours and qemu-img's are) and without. Target: sparsify at most 0.6x nbdcopy's
 * time, peak RSS at most 200 MiB. Every tool starts after a sync, untimed. The first run's copy is checked, untimed: qemu-img check, and
 * qemu-img compare against sparsify's copy of the same disk from the local file (NBD must change
 * nothing); the bench fails if either does not pass.
 */
import { spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, timed, dropFile, makeExtDisk, sh } from './lib.js';

export interface NbdRow {
  name: string;
  seconds: number[];
  peakRss: number;
  outputBytes: number;
}

/** Our copy from the export is a valid qcow2 that reads exactly as our copy from the file does. */
function checkCopy(copy: string, disk: string, work: string): void {
  const local = join(work, 'nbd-local.qcow2');
  dropFile(local);
  try {
    sh(process.execPath, [CLI, '-q', '--convert', 'qcow2', disk, local]);
    sh('qemu-img', ['check', '-q', copy]);
    sh('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', copy, local]);
  } catch (e) {
    throw new Error(`the copy from NBD is wrong: ${(e as Error).message}`);
  } finally {
    dropFile(local);
  }
}

export async function benchNbd(work: string, opts: { runs: number; log: (s: string) => void }): Promise<NbdRow[]> {
  const { runs, log } = opts;
  const disk = join(work, 'nbd-disk4g.img');
  if (!existsSync(disk)) makeExtDisk(disk, work, 4, 2);
  const socket = join(work, 'bench-nbd.sock');
  // -e 8: nbdcopy opens several connections; -r: read-only, so the server allows multi-conn.
  const server = spawn('qemu-nbd', ['-r', '-f', 'raw', '-e', '8', '--persistent', '-k', socket, disk], { stdio: 'ignore' });
  try {
    for (let i = 0; i < 200 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
    const uri = `nbd+unix:///?socket=${socket}`;
    const tools: Array<{ name: string; cmd: string; args: (out: string) => string[]; out: string }> = [
      { name: 'sparsify (to qcow2)', cmd: process.execPath, args: (o) => [CLI, '-q', '--convert', 'qcow2', uri, o], out: join(work, 'nbd-ours.qcow2') },
      // --flush: the output durable at the end, as sparsify and qemu-img make theirs (the same tool without it, for reference).
      { name: 'nbdcopy --flush (to raw)', cmd: 'nbdcopy', args: (o) => ['--flush', uri, o], out: join(work, 'nbd-nbdcopy.raw') },
      { name: 'nbdcopy, no flush (to raw)', cmd: 'nbdcopy', args: (o) => [uri, o], out: join(work, 'nbd-nbdcopy-noflush.raw') },
      { name: 'qemu-img convert (to qcow2)', cmd: 'qemu-img', args: (o) => ['convert', '-O', 'qcow2', uri, o], out: join(work, 'nbd-qemu.qcow2') },
    ];
    const rows: NbdRow[] = tools.map((t) => ({ name: t.name, seconds: [], peakRss: 0, outputBytes: 0 }));
    for (let i = 0; i < runs; i++) {
      const line: string[] = [];
      tools.forEach((t, k) => {
        dropFile(t.out);
        // nbdcopy wants its output to exist (it opens a file, it does not create an image).
        if (t.name.startsWith('nbdcopy')) timed('truncate', ['-s', String(statSync(disk).size), t.out], work);
        // Untimed: what the previous tool left dirty (qemu-img convert and plain nbdcopy do not flush
        // their 4 GiB) is written now, not during the next tool's run.
        sh('sync', []);
        const r = timed(t.cmd, t.args(t.out), work);
        rows[k]!.seconds.push(r.seconds);
        rows[k]!.peakRss = Math.max(rows[k]!.peakRss, r.peakRssBytes);
        rows[k]!.outputBytes = statSync(t.out).blocks * 512;
        if (i === 0 && k === 0) checkCopy(t.out, disk, work);
        dropFile(t.out);
        line.push(`${t.name.split(' (')[0]} ${r.seconds.toFixed(2)} s`);
      });
      log(`  nbd run ${i + 1}: ${line.join(', ')}`);
    }
    return rows;
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
  }
}
