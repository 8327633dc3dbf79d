/**
 * A real libvirt for tests: libvirtd and virtlogd started when they are not running (and left
 * running, as a system daemon would be), and throwaway VMs: `<domain type='qemu'>` (TCG), 64 MiB,
 * no OS, so it sits in the BIOS holding its disks open. QEMU runs as root without relabelling, so
 * the test's private folders and file owners stay as they are.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { haveTool } from './fixtures.js';

export const LIBVIRT_URI = 'qemu:///system';

function virsh(args: string[]): { status: number; out: string } {
  const r = spawnSync('virsh', ['-c', LIBVIRT_URI, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status ?? -1, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

const QEMU = '/usr/bin/qemu-system-x86_64';

/** Why libvirt tests cannot run here, or undefined. */
export function libvirtMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'libvirt tests run as root';
  const missing = ['virsh', 'libvirtd', 'virtlogd'].filter((t) => !haveTool(t));
  if (missing.length) return `missing: ${missing.join(', ')} (apt-get install libvirt-daemon-system libvirt-clients)`;
  if (!existsSync(QEMU)) return `no ${QEMU} (apt-get install qemu-system-x86)`;
  return undefined;
}

/** Start virtlogd and libvirtd unless they answer already; wait until the connection works (30 s at most). */
export async function ensureLibvirtd(): Promise<void> {
  if (virsh(['version']).status === 0) return;
  for (const daemon of ['virtlogd', 'libvirtd']) {
    const running = spawnSync('pgrep', ['-x', daemon]).status === 0;
    if (!running) {
      const r = spawnSync(daemon, ['-d'], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`${daemon} -d failed: ${r.stderr}`);
    }
  }
  const t0 = Date.now();
  for (;;) {
    const v = virsh(['version']);
    if (v.status === 0) return;
    if (Date.now() - t0 > 30_000) throw new Error(`libvirtd does not answer: ${v.out}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

export interface TestVm {
  name: string;
  start(): void;
  destroy(): void;
  /** Destroy (if running) and undefine; never throws. */
  remove(): void;
}

/** Define (not start) a VM using raw disk files, in order vda, vdb, ... */
export function defineVm(name: string, disks: string[], dir: string): TestVm {
  const devs = disks
    .map(
      (path, i) => `
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='${path}'/>
      <target dev='vd${String.fromCharCode(97 + i)}' bus='virtio'/>
    </disk>`,
    )
    .join('');
  const xml = `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <devices>${devs}
  </devices>
</domain>
`;
  const file = join(dir, `${name}.xml`);
  writeFileSync(file, xml);
  const must = (args: string[]) => {
    const r = virsh(args);
    if (r.status !== 0) throw new Error(`virsh ${args.join(' ')}: ${r.out}`);
  };
  must(['define', file]);
  return {
    name,
    start: () => must(['start', name]),
    destroy: () => must(['destroy', name]),
    remove: () => {
      virsh(['destroy', name]);
      virsh(['undefine', name]);
    },
  };
}
