/**
 * `sparsify --trim-vm NAME [--connect URI]`: the service's trim of a running VM, for one VM from
 * the command line. The same checks (vms/trim-checks.ts: running, not migrating, discard='unmap'
 * on every writable disk, raw or qcow2, the agent answering guest-ping), then the guest's own
 * guest-fstrim through libvirt, and the same report: each image's allocated bytes (st_blocks)
 * before and after, and the agent's per-mountpoint figures. Nothing here writes an image.
 */
import { execFile } from 'node:child_process';
import { statSync } from 'node:fs';
import { SparsifyError } from '../index.js';
import { DEFAULT_FSTRIM_TIMEOUT_S, guestFstrim, liveDisks, liveState, pingAgent } from '../service/vms/agent.js';
import { agentRefusal, diskRefusal, trimmable } from '../service/vms/trim-checks.js';
import type { Output } from './output.js';

export const DEFAULT_CONNECT = 'qemu:///system';

function domuuid(uri: string, name: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('virsh', ['-q', '-r', '-c', uri, 'domuuid', name], { timeout: 20_000, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout.trim());
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return reject(new SparsifyError('virsh is not installed (Debian: apt-get install libvirt-clients)'));
      reject(new SparsifyError(`--trim-vm ${name}: ${(stderr.trim().split('\n').pop() ?? err.message).replace(/^error:\s*/, '')} (libvirt ${uri})`));
    });
  });
}

function allocated(path: string | null): number | null {
  if (!path) return null;
  try {
    const st = statSync(path);
    return st.isBlockDevice() ? null : st.blocks * 512;
  } catch {
    return null;
  }
}

const mib = (n: number | null) => (n === null ? 'n/a' : `${(n / 1048576).toFixed(1)} MiB`);

export async function runTrimVm(name: string, uri: string, out: Output): Promise<number> {
  const uuid = await domuuid(uri, name);
  const st = await liveState(uri, uuid).catch((e: Error) => {
    throw new SparsifyError(`--trim-vm ${name}: ${e.message}`);
  });
  if (st.state !== 'running' || (st.reason && /migrat/i.test(st.reason))) throw new SparsifyError(`${name} is ${st.state}${st.reason ? ` (${st.reason})` : ''}: only a running guest can trim itself (a VM that is shut off is sparsified instead)`);
  const live = await liveDisks(uri, uuid);
  const refusal = diskRefusal(name, live, new Map(), () => true, false);
  if (refusal) throw new SparsifyError(refusal.detail);
  try {
    await pingAgent(uri, uuid);
  } catch (e) {
    throw new SparsifyError(agentRefusal(name, (e as Error).message).detail);
  }
  const images = live.filter(trimmable).map((d) => ({ target: d.target, source: d.source, before: allocated(d.source), after: null as number | null }));
  out.status(`Trimming ${name} through its guest agent`);
  const t0 = Date.now();
  const guest = await guestFstrim(uri, uuid, DEFAULT_FSTRIM_TIMEOUT_S).catch((e: Error) => {
    throw new SparsifyError(`the guest agent of ${name} did not trim: ${e.message}`);
  });
  const seconds = (Date.now() - t0) / 1000;
  let total = 0;
  for (const i of images) {
    i.after = allocated(i.source);
    const given = i.before === null || i.after === null ? null : i.before - i.after;
    if (given !== null) total += given;
    out.info(`${i.target} ${i.source ?? ''}: allocated ${mib(i.before)} before, ${mib(i.after)} after, ${mib(given === null ? null : Math.max(0, given))} given back`);
  }
  for (const g of guest) out.info(`guest ${g.path}: ${g.error ? `not trimmed (${g.error})` : `trimmed ${mib(g.trimmed)} (the guest's count)`}`);
  out.status(`Trim of ${name} completed in ${seconds.toFixed(1)} s: ${mib(Math.max(0, total))} given back to the host`);
  return 0;
}
