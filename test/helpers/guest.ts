/**
 * A real, small Debian guest for the live-trim tests, built once per run and cached in
 * test-output/guest/ (a marker file says the build finished):
 * - `debootstrap --variant=minbase` of bookworm with only the kernel, systemd, udev and
 *   qemu-guest-agent (the mirror is the one apt uses here, Debian's);
 * - the tree made into an ext4 filesystem with `mke2fs -d` (no partition table: the kernel mounts
 *   /dev/vda), converted to qcow2; the kernel and its initrd are copied out and booted directly;
 * - the agent listens on the virtio-serial port org.qemu.guest_agent.0 (Debian's unit is pulled in
 *   by udev when the port appears); timers that would trim or scrub by themselves are masked, so
 *   only the test's trim gives space back; the filesystem is mounted without `discard`, so a delete
 *   alone gives nothing back.
 * Each VM boots its own copy of the qcow2 under TCG, `<driver discard='unmap'>` unless asked not
 * to. Commands run in the guest through the agent's guest-exec (base64 output, polled status).
 */
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { testOutput } from '../service/browser.js';
import { haveTool } from './fixtures.js';
import { LIBVIRT_URI } from './libvirt.js';

const SUITE = 'bookworm';
const MIRROR = 'http://deb.debian.org/debian';
const PACKAGES = ['linux-image-amd64', 'systemd', 'systemd-sysv', 'udev', 'qemu-guest-agent'];
/** Room for the system (~450 MB) and the tests' 200 MB file. */
const FS_SIZE = '1200M';
/** Bump when the recipe changes: a cached guest of another recipe is rebuilt. */
const RECIPE = 'v2';
export const GUEST_DIR = join(testOutput, 'guest', RECIPE);

export interface GuestImage {
  kernel: string;
  initrd: string;
  /** The built qcow2; VMs boot copies of it. */
  qcow2: string;
  /** Seconds the build took (0 when it came from the cache). */
  buildSeconds: number;
}

/** A command line run with a bound; rejects with its stderr. */
export function sh(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 << 20, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive' } }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ').slice(0, 300)} failed${err.killed ? ` (killed after ${timeoutMs / 1000} s)` : ''}: ${stderr.trim().split('\n').slice(-5).join(' | ') || err.message}`));
      else resolve(stdout);
    });
  });
}

/** Why the guest cannot be built here, or undefined. */
export function guestMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'the guest is built as root';
  const missing = ['debootstrap', 'mke2fs', 'qemu-img', 'virsh'].filter((t) => !haveTool(t));
  return missing.length ? `missing: ${missing.join(', ')} (apt-get install debootstrap e2fsprogs qemu-utils libvirt-clients)` : undefined;
}

/** Build the guest unless the cache has it. Takes a few minutes the first time (download, unpack, initrd). */
export async function buildGuest(): Promise<GuestImage> {
  const out = { kernel: join(GUEST_DIR, 'vmlinuz'), initrd: join(GUEST_DIR, 'initrd.img'), qcow2: join(GUEST_DIR, 'root.qcow2') };
  if (existsSync(join(GUEST_DIR, 'done'))) return { ...out, buildSeconds: 0 };
  const t0 = Date.now();
  rmSync(GUEST_DIR, { recursive: true, force: true });
  mkdirSync(GUEST_DIR, { recursive: true });
  // The tree is built in memory where it can be: dpkg syncs every file it unpacks, a no-op on tmpfs (the build's system time halves).
  const root = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : GUEST_DIR, 'sparsify-guest-'));
  try {
    // Two stages, so the initramfs settings are in place before the kernel's postinst builds the
    // initrd: only the modules that mount the root (a small initrd made once, not twice).
    await sh('debootstrap', ['--foreign', '--variant=minbase', `--include=${PACKAGES.join(',')}`, SUITE, root, MIRROR], 15 * 60_000);
    configureInitramfs(root);
    await sh('chroot', [root, '/debootstrap/debootstrap', '--second-stage'], 15 * 60_000);
    configure(root);
    const boot = readdirSync(join(root, 'boot'));
    const kernel = boot.find((f) => f.startsWith('vmlinuz-'));
    const initrd = boot.find((f) => f.startsWith('initrd.img-'));
    for (const v of readdirSync(join(root, 'usr/lib/modules'))) for (const m of UNUSED_MODULES) rmSync(join(root, 'usr/lib/modules', v, 'kernel', m), { recursive: true, force: true });
    if (!kernel || !initrd) throw new Error(`no kernel or initrd in the guest's /boot (${boot.join(', ')})`);
    copyFileSync(join(root, 'boot', kernel), out.kernel);
    copyFileSync(join(root, 'boot', initrd), out.initrd);
    const raw = join(GUEST_DIR, 'root.raw');
    // Package caches are not needed in the guest.
    rmSync(join(root, 'var/cache/apt/archives'), { recursive: true, force: true });
    mkdirSync(join(root, 'var/cache/apt/archives/partial'), { recursive: true });
    await sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'root', '-d', root, raw, FS_SIZE], 5 * 60_000);
    await sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, out.qcow2], 5 * 60_000);
    rmSync(raw, { force: true });
    writeFileSync(join(GUEST_DIR, 'done'), `${new Date().toISOString()}\n`);
  } catch (e) {
    rmSync(GUEST_DIR, { recursive: true, force: true });
    throw e;
  } finally {
    await unmountUnder(root);
    rmSync(root, { recursive: true, force: true });
  }
  return { ...out, buildSeconds: (Date.now() - t0) / 1000 };
}

/** A debootstrap cut short leaves /proc and /sys mounted in the tree: unmount them before the tree is removed. */
async function unmountUnder(root: string): Promise<void> {
  const mounts = readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((m) => m.startsWith(`${root}/`))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) await sh('umount', ['-l', m]).catch(() => undefined);
}

/** The initrd holds only what mounts /dev/vda (the rest of the modules load from the root); update_initramfs=no keeps the trigger from building it a second time. */
function configureInitramfs(root: string): void {
  mkdirSync(join(root, 'etc/initramfs-tools/conf.d'), { recursive: true });
  writeFileSync(join(root, 'etc/initramfs-tools/conf.d/sparsify-guest.conf'), 'MODULES=list\n');
  writeFileSync(join(root, 'etc/initramfs-tools/modules'), 'virtio_pci\nvirtio_blk\next4\n');
  writeFileSync(join(root, 'etc/initramfs-tools/update-initramfs.conf'), 'update_initramfs=no\nbackup_initramfs=no\n');
}

/** Modules no guest of these tests loads (graphics, sound, radios, media, InfiniBand, staging): out of the image, which copies faster. */
const UNUSED_MODULES = ['drivers/gpu', 'drivers/media', 'drivers/net/wireless', 'drivers/infiniband', 'drivers/staging', 'drivers/iio', 'drivers/bluetooth', 'sound', 'net/wireless', 'net/mac80211', 'net/bluetooth'];

/** The guest's files: what it mounts, its name, and the units that must not run by themselves. */
function configure(root: string): void {
  writeFileSync(join(root, 'etc/fstab'), '/dev/vda / ext4 rw,errors=remount-ro 0 1\n');
  writeFileSync(join(root, 'etc/hostname'), 'trimguest\n');
  // Masked: periodic fstrim and e2scrub (they would trim on their own), apt's and tmpfiles' timers, gettys on VTs.
  for (const unit of ['fstrim.timer', 'e2scrub_all.timer', 'apt-daily.timer', 'apt-daily-upgrade.timer', 'dpkg-db-backup.timer', 'systemd-tmpfiles-clean.timer', 'getty@tty1.service', 'systemd-timesyncd.service']) {
    const p = join(root, 'etc/systemd/system', unit);
    rmSync(p, { force: true });
    symlinkSync('/dev/null', p);
  }
}

export interface GuestVm {
  name: string;
  /** The VM's own qcow2. */
  disk: string;
  /** Seconds from `virsh start` until the agent answered. */
  bootSeconds: number;
  /** Run a shell command line in the guest through guest-exec; resolves with its exit code and output. */
  exec(script: string, timeoutMs?: number): Promise<{ exitcode: number; stdout: string; stderr: string }>;
  /** One agent command (JSON), its `return`. */
  agent(command: object, timeoutSeconds?: number): Promise<unknown>;
  virsh(args: string[], timeoutMs?: number): Promise<string>;
  /** Clean shutdown (systemctl poweroff in the guest), waiting until libvirt says shut off (falls back to destroy). */
  shutdown(timeoutMs?: number): Promise<void>;
  /** Destroy and undefine; never throws. */
  remove(): Promise<void>;
}

function domainXml(name: string, img: GuestImage, disk: string, discard: boolean, consoleLog: string): string {
  return `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>384</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${img.kernel}</kernel>
    <initrd>${img.initrd}</initrd>
    <cmdline>root=/dev/vda rootfstype=ext4 rw console=ttyS0 quiet mitigations=off systemd.show_status=0</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'${discard ? " discard='unmap'" : ''}/>
      <source file='${disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <serial type='file'>
      <source path='${consoleLog}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Define and start a VM booting a copy of the guest at `dir/NAME.qcow2`; resolves once the agent
 * answers guest-ping (within `bootTimeoutMs`). The VM is removed again if it does not.
 */
export async function startGuest(img: GuestImage, name: string, dir: string, opts: { discard?: boolean; bootTimeoutMs?: number; /** Where its copy of the guest goes (default dir/NAME.qcow2). */ disk?: string } = {}): Promise<GuestVm> {
  const disk = opts.disk ?? join(dir, `${name}.qcow2`);
  await sh('cp', ['--sparse=always', img.qcow2, disk], 120_000);
  const consoleLog = join(dir, `${name}.console.log`);
  const xmlFile = join(dir, `${name}.xml`);
  writeFileSync(xmlFile, domainXml(name, img, disk, opts.discard ?? true, consoleLog));
  const virsh = (args: string[], timeoutMs = 60_000) => sh('virsh', ['-c', LIBVIRT_URI, ...args], timeoutMs);
  const agent = async (command: object, timeoutSeconds = 10): Promise<unknown> => {
    const out = await virsh(['qemu-agent-command', name, JSON.stringify(command), '--timeout', String(timeoutSeconds)], (timeoutSeconds + 10) * 1000);
    return (JSON.parse(out) as { return: unknown }).return;
  };
  const vm: GuestVm = {
    name,
    disk,
    bootSeconds: 0,
    agent,
    virsh,
    exec: async (script, timeoutMs = 120_000) => {
      const { pid } = (await agent({ execute: 'guest-exec', arguments: { path: '/bin/sh', arg: ['-c', script], 'capture-output': true } })) as { pid: number };
      const until = Date.now() + timeoutMs;
      for (;;) {
        const st = (await agent({ execute: 'guest-exec-status', arguments: { pid } })) as { exited: boolean; exitcode?: number; signal?: number; 'out-data'?: string; 'err-data'?: string };
        if (st.exited) {
          const dec = (s?: string) => (s ? Buffer.from(s, 'base64').toString('utf8') : '');
          return { exitcode: st.exitcode ?? 128 + (st.signal ?? 0), stdout: dec(st['out-data']), stderr: dec(st['err-data']) };
        }
        if (Date.now() > until) throw new Error(`guest command did not end within ${timeoutMs / 1000} s: ${script}`);
        await sleep(300);
      }
    },
    shutdown: async (timeoutMs = 90_000) => {
      // systemd itself through guest-exec: a minbase guest has no D-Bus, so no logind to act on
      // ACPI's power button nor to schedule the agent's own guest-shutdown (`shutdown +0`).
      await agent({ execute: 'guest-exec', arguments: { path: '/bin/systemctl', arg: ['--no-block', 'poweroff'] } }).catch(() => virsh(['shutdown', name]).catch(() => undefined));
      const until = Date.now() + timeoutMs;
      while (Date.now() < until) {
        const st = (await virsh(['domstate', name]).catch(() => 'shut off')).trim();
        if (st === 'shut off') return;
        await sleep(500);
      }
      await virsh(['destroy', name]).catch(() => undefined);
      throw new Error(`${name} did not shut down within ${timeoutMs / 1000} s`);
    },
    remove: async () => {
      await virsh(['destroy', name]).catch(() => undefined);
      await virsh(['undefine', name]).catch(() => undefined);
    },
  };
  await virsh(['define', xmlFile]);
  try {
    const t0 = Date.now();
    await virsh(['start', name]);
    const until = t0 + (opts.bootTimeoutMs ?? 180_000);
    for (;;) {
      try {
        await agent({ execute: 'guest-ping' }, 3);
        break;
      } catch (e) {
        if (Date.now() > until) throw new Error(`the guest's agent did not answer within ${(opts.bootTimeoutMs ?? 180_000) / 1000} s of the start (${(e as Error).message}); console: ${consoleLog}`);
        await sleep(1000);
      }
    }
    vm.bootSeconds = (Date.now() - t0) / 1000;
  } catch (e) {
    await vm.remove();
    throw e;
  }
  return vm;
}
