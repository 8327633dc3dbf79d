/**
 * Reading VMs from libvirt through `virsh` (libvirt-clients), read-only: which VMs a connection
 * knows, their state, and the disks each uses. Two processes per read, whatever the number of
 * VMs: one lists the UUIDs, one runs `dominfo`, `domstate --reason`, `domblklist --details` and
 * `dumpxml` (the live drivers' discard, the agent channel's state) for all of them (virsh runs `;`-separated commands in order, and a VM that vanished meanwhile only
 * leaves its sections empty). Each section starts with an `echo` marker, as virsh prints no
 * separators of its own. Commands are given by UUID, so a VM's name never reaches a command line.
 */
import { execFile } from 'node:child_process';
import type { VmState } from '../store/vms.js';
import { parseLiveDisks, type LiveDisk } from './agent.js';

/** A VM as libvirt describes it, its disks' sources not yet matched to domains. */
export interface LibvirtVm {
  uuid: string;
  name: string;
  state: VmState;
  reason: string | null;
  disks: Array<{ type: string; device: string; target: string; source: string | null }>;
  /** What the live XML says (dumpxml, read in the same call): each disk's driver, and the guest agent's channel. */
  live?: LiveFacts;
}

export interface LiveFacts {
  disks: LiveDisk[];
  /** The org.qemu.guest_agent.0 channel: connected (an agent listens in the guest), disconnected, or none in the XML. */
  agent: 'connected' | 'disconnected' | 'none';
}

/** The agent channel's state in a live domain XML (libvirt adds state='connected' when the guest's agent opened its port). */
export function agentChannel(xml: string): LiveFacts['agent'] {
  const m = /<target\b[^>]*name=(['"])org\.qemu\.guest_agent\.0\1[^>]*>/.exec(xml);
  if (!m) return 'none';
  return /state=(['"])connected\1/.test(m[0]) ? 'connected' : 'disconnected';
}

export class VirshError extends Error {}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const TIMEOUT_MS = 20_000;
const MAX_OUTPUT = 16 << 20;

/** Run one virsh command line on `uri`, read-only. `partial`: a failure that still printed something is returned as output. */
function virsh(uri: string, command: string, partial = false): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('virsh', ['-q', '-r', '-c', uri, command], { timeout: TIMEOUT_MS, maxBuffer: MAX_OUTPUT, env: { ...process.env, LC_ALL: 'C' } }, (err, stdout, stderr) => {
      if (!err || (partial && stdout.trim() && !err.killed)) return resolve(stdout);
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return reject(new VirshError('virsh is not installed (Debian: apt-get install libvirt-clients)'));
      if (err.killed) return reject(new VirshError(`virsh -c ${uri}: no answer within ${TIMEOUT_MS / 1000} s`));
      const why = stderr.trim().split('\n').filter(Boolean).pop() ?? err.message;
      reject(new VirshError(`virsh -c ${uri}: ${why.replace(/^error:\s*/, '')}`));
    });
  });
}

/** virsh's state words (dominfo's State:) to ours; a migration shows as a reason of running or paused. */
export function stateOf(state: string, reason: string | null): VmState {
  const s = state.trim().toLowerCase();
  if ((s === 'running' || s === 'paused') && reason && /migrat|post-copy/i.test(reason) && !/cancel/i.test(reason)) return 'migrating';
  switch (s) {
    case 'running':
      return 'running';
    case 'paused':
      return 'paused';
    case 'in shutdown':
      return 'shutting-down';
    case 'shut off':
      return 'shut-off';
    case 'crashed':
      return 'crashed';
    case 'pmsuspended':
      return 'suspended';
    case 'idle':
      return 'idle';
    case 'blocked':
      return 'blocked';
    default:
      return 'unknown';
  }
}

/** Only a VM that is shut off leaves its disks alone; every other state has (or may have) a QEMU process holding them. */
export const isDown = (s: VmState): boolean => s === 'shut-off';

/** `Key:   value` lines (dominfo). */
function keyValues(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) m.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
  }
  return m;
}

/** `domstate --reason`: "paused (migration)". */
function parseState(text: string): { state: string; reason: string | null } | undefined {
  const line = text.trim().split('\n')[0]?.trim();
  if (!line) return undefined;
  const m = /^(.*?)\s*\((.*)\)$/.exec(line);
  return m ? { state: m[1]!, reason: m[2]! } : { state: line, reason: null };
}

/** `domblklist --details` without its header (-q): "file disk vda /path/with spaces.img". */
function parseDisks(text: string): LibvirtVm['disks'] {
  const out: LibvirtVm['disks'] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*(\S+)\s+(\S+)\s+(\S+)\s+(.*?)\s*$/.exec(line);
    if (!m || (m[1] === 'Type' && m[2] === 'Device') || /^-+$/.test(m[1]!)) continue;
    out.push({ type: m[1]!, device: m[2]!, target: m[3]!, source: m[4] === '-' || m[4] === '' ? null : m[4]! });
  }
  return out;
}

/** Split output at `@@name@@` markers into [name, text] sections, in order. */
function sections(text: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const re = /@@(info|state|disks|xml)@@/g;
  let last: { name: string; from: number } | undefined;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    if (last) out.push([last.name, text.slice(last.from, m.index)]);
    last = { name: m[1]!, from: m.index + m[0].length };
  }
  if (last) out.push([last.name, text.slice(last.from)]);
  return out;
}

/** Every VM the connection knows (running or defined), with its state and disks. */
export async function readVms(uri: string): Promise<LibvirtVm[]> {
  const uuids = (await virsh(uri, 'list --all --uuid'))
    .split('\n')
    .map((s) => s.trim())
    .filter((s) => UUID.test(s));
  if (!uuids.length) return [];
  const script = uuids.map((u) => `echo @@info@@; dominfo ${u}; echo @@state@@; domstate ${u} --reason; echo @@disks@@; domblklist ${u} --details; echo @@xml@@; dumpxml ${u}`).join('; ');
  // A VM undefined between the two calls makes virsh exit non-zero after printing the others.
  return parseVms(await virsh(uri, script, true));
}

/** The output of the per-VM script (`@@info@@` dominfo, `@@state@@` domstate --reason, `@@disks@@` domblklist --details), VM after VM. */
export function parseVms(text: string): LibvirtVm[] {
  const vms: LibvirtVm[] = [];
  let cur: Map<string, string> | undefined;
  const flush = () => {
    const info = keyValues(cur?.get('info') ?? '');
    const uuid = info.get('uuid');
    if (!uuid || !UUID.test(uuid)) return;
    const st = parseState(cur?.get('state') ?? '');
    const reason = st?.reason ?? null;
    const xml = cur?.get('xml') ?? '';
    const live = xml.includes('<domain') ? { disks: parseLiveDisks(xml), agent: agentChannel(xml) } : undefined;
    vms.push({ uuid: uuid.toLowerCase(), name: info.get('name') ?? uuid, state: stateOf(st?.state ?? info.get('state') ?? '', reason), reason, disks: parseDisks(cur?.get('disks') ?? ''), ...(live ? { live } : {}) });
  };
  for (const [name, body] of sections(text)) {
    if (name === 'info') {
      if (cur) flush();
      cur = new Map();
    }
    cur?.set(name, body);
  }
  if (cur) flush();
  return vms;
}
