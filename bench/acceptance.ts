/**
 * The filesystems acceptance disk (test/fixtures/make-mixed-disk.sh: GPT + ext4 + XFS + btrfs +
 * NTFS + vfat + swap + LVM, garbage in all free space) sparsified by us and, when it is
 * installed, by virt-sparsify on the same image: allocated sizes (du) and wall times.
 * Target: our output allocates <= 1.02 x virt-sparsify's.
 *
 *   npm run build && node dist/bench/acceptance.js      (needs root: the builder uses a loop device)
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';

// The repository, whether this runs from dist/bench (npm run bench) or bench/ (tsx).
const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = HERE.includes('/dist/') ? join(HERE, '..', '..') : join(HERE, '..');
const CLI = join(ROOT, 'bin', 'sparsify.js');

export interface AcceptanceResult {
  ourAllocatedBytes: number;
  virtAllocatedBytes?: number;
  ratio?: number;
  ourSeconds: number;
  virtSeconds?: number;
  note?: string;
}

const allocated = (path: string): number => statSync(path).blocks * 512;

/** Run a command to completion; wall seconds. Throws with its output on failure. */
function runTimed(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): { seconds: number; output: string } {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8', env, maxBuffer: 64 << 20 });
  const seconds = (performance.now() - t0) / 1000;
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}):\n${output.slice(-4000)}`);
  return { seconds, output };
}

function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

export async function benchAcceptance(opts: { log: (s: string) => void }): Promise<AcceptanceResult> {
  const { log } = opts;
  const work = mkdtempSync(join(process.env['BENCH_DIR'] ?? tmpdir(), 'sparsify-acceptance-'));
  try {
    const disk = join(work, 'disk.img');
    log('acceptance: building the mixed disk (GPT + ext4 + XFS + btrfs + NTFS + vfat + swap + LVM)');
    runTimed('bash', [join(ROOT, 'test', 'fixtures', 'make-mixed-disk.sh'), disk], { ...process.env, TMPDIR: work });
    log(`acceptance: input ${statSync(disk).size} bytes, ${allocated(disk)} allocated`);

    const ours = join(work, 'ours.img');
    const us = runTimed(process.execPath, [CLI, '--machine-readable', disk, ours]);
    const result: AcceptanceResult = { ourAllocatedBytes: allocated(ours), ourSeconds: us.seconds };
    log(`acceptance: sparsify ${result.ourAllocatedBytes} bytes allocated in ${us.seconds.toFixed(2)} s`);
    rmSync(ours);

    if (!have('virt-sparsify')) return { ...result, note: 'virt-sparsify not installed (Debian package guestfs-tools)' };
    const virt = join(work, 'virt.img');
    // No KVM here: libguestfs's appliance runs under TCG.
    const env = { ...process.env, LIBGUESTFS_BACKEND: 'direct', LIBGUESTFS_BACKEND_SETTINGS: 'force_tcg' };
    try {
      const v = runTimed('virt-sparsify', [disk, virt], env);
      const virtAllocatedBytes = allocated(virt);
      const ratio = result.ourAllocatedBytes / virtAllocatedBytes;
      log(`acceptance: virt-sparsify ${virtAllocatedBytes} bytes allocated in ${v.seconds.toFixed(2)} s; ours/virt-sparsify = ${ratio.toFixed(3)} (target <= 1.02)`);
      return { ...result, virtAllocatedBytes, ratio, virtSeconds: v.seconds, note: ratio <= 1.02 ? 'within target' : 'ABOVE target 1.02' };
    } catch (e) {
      return { ...result, note: `virt-sparsify failed: ${(e as Error).message.split('\n').slice(-6).join(' | ')}` };
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  benchAcceptance({ log: (s) => console.log(s) }).then(
    (r) => console.log(JSON.stringify(r, null, 2)),
    (e: unknown) => {
      console.error(e instanceof Error ? e.message : String(e));
      process.exit(1);
    },
  );
}
