/**
 * A running VM's own view, through libvirt on the host that runs it (read-write connection: QEMU's
 * guest agent commands are not read-only):
 * - `qemu-agent-command UUID '{"execute":"guest-ping"}' --timeout N`: the agent answers, or not
 *   within N seconds (libvirt says "Guest agent is not responding" or "not connected");
 * - `qemu-agent-command ... guest-fstrim`: the guest trims every mounted filesystem that supports
 *   it and returns, per mountpoint, what it trimmed (`trimmed`, bytes, or an `error`): what the
 *   guest released, not what the host got back (that is measured on the images);
 * - `dumpxml UUID` (live): each disk's `<driver type=... discard=...>`; QEMU passes a guest's
 *   discards to the image only with discard='unmap' (default 'ignore').
 * Every command is given by UUID and bounded twice: virsh's --timeout for the agent, and a kill
 * of the virsh process a little later in case libvirt itself hangs.
 */
import { execFile } from 'node:child_process';

/** How long an agent gets to answer a ping. */
export const PING_TIMEOUT_S = 5;
/** How long a guest gets to trim (a large filesystem under load may take a while). */
export const DEFAULT_FSTRIM_TIMEOUT_S = 300;
const KILL_GRACE_MS = 10_000;

/** A failure of the agent or of libvirt, with a stable code. */
export class AgentError extends Error {
  constructor(
    readonly code: 'agent-timeout' | 'agent-not-connected' | 'agent-error' | 'virsh-failed',
    message: string,
  ) {
    super(message);
  }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Run virsh on `uri` (read-write) and return stdout; a kill after `timeoutMs`. */
function virsh(uri: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('virsh', ['-q', '-c', uri, ...args], { timeout: timeoutMs, maxBuffer: 16 << 20, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return reject(new AgentError('virsh-failed', 'virsh is not installed (Debian: apt-get install libvirt-clients)'));
      if (err.killed) return reject(new AgentError('agent-timeout', `virsh ${args[0]} gave no answer within ${Math.round(timeoutMs / 1000)} s`));
      const why = (stderr.trim().split('\n').filter(Boolean).pop() ?? err.message).replace(/^error:\s*/, '');
      reject(classify(why));
    });
  });
}

/** libvirt's words for an agent that is not there or too slow, to our codes. */
function classify(why: string): AgentError {
  if (/not responding|timed out|timeout/i.test(why)) return new AgentError('agent-timeout', why);
  if (/not connected|not configured|agent is not|unable to execute QEMU agent command/i.test(why)) return new AgentError('agent-not-connected', why);
  return new AgentError('virsh-failed', why);
}

function checkUuid(uuid: string): void {
  if (!UUID.test(uuid)) throw new AgentError('virsh-failed', `not a VM UUID: ${uuid}`);
}

/** One agent command; its `return` value. */
async function agentCommand(uri: string, uuid: string, command: object, timeoutS: number): Promise<unknown> {
  checkUuid(uuid);
  const out = await virsh(uri, ['qemu-agent-command', uuid, JSON.stringify(command), '--timeout', String(timeoutS)], timeoutS * 1000 + KILL_GRACE_MS);
  try {
    const r = JSON.parse(out) as { return?: unknown; error?: { desc?: string } };
    if (r.error) throw new AgentError('agent-error', r.error.desc ?? 'the agent answered with an error');
    return r.return;
  } catch (e) {
    if (e instanceof AgentError) throw e;
    throw new AgentError('agent-error', `the agent's answer is not JSON: ${out.slice(0, 200)}`);
  }
}

/** Does the agent answer guest-ping within `timeoutS`? Resolves, or rejects with an AgentError. */
export async function pingAgent(uri: string, uuid: string, timeoutS = PING_TIMEOUT_S): Promise<void> {
  await agentCommand(uri, uuid, { execute: 'guest-ping' }, timeoutS);
}

/** What the guest trimmed on one mountpoint (its own figures). */
export interface GuestTrim {
  path: string;
  /** Bytes the guest's filesystem says it trimmed (null when it did not say). */
  trimmed: number | null;
  /** Why this mountpoint was not trimmed. */
  error: string | null;
}

/** Run guest-fstrim (minimum extent 0: everything free); bounded by `timeoutS`. */
export async function guestFstrim(uri: string, uuid: string, timeoutS = DEFAULT_FSTRIM_TIMEOUT_S): Promise<GuestTrim[]> {
  const r = (await agentCommand(uri, uuid, { execute: 'guest-fstrim', arguments: { minimum: 0 } }, timeoutS)) as { paths?: Array<{ path?: string; trimmed?: number; error?: string }> } | undefined;
  return (r?.paths ?? []).map((p) => ({ path: p.path ?? '?', trimmed: typeof p.trimmed === 'number' ? p.trimmed : null, error: p.error ?? null }));
}

/** A disk as the live domain XML has it. */
export interface LiveDisk {
  target: string;
  device: string;
  type: string;
  /** The driver's format (raw, qcow2, ...), or null when the XML says none. */
  format: string | null;
  /** The driver's discard attribute (unmap, ignore), or null when absent (QEMU then ignores discards). */
  discard: string | null;
  source: string | null;
  readonly: boolean;
}

const attr = (tag: string, name: string): string | null => {
  const m = new RegExp(`\\s${name}=(['"])(.*?)\\1`).exec(tag);
  return m ? m[2]!.replace(/&apos;/g, "'").replace(/&quot;/g, '"').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&') : null;
};

/** The `<disk>` elements of a domain XML (libvirt writes them in one regular shape). */
export function parseLiveDisks(xml: string): LiveDisk[] {
  const out: LiveDisk[] = [];
  for (const m of xml.matchAll(/<disk\b([^>]*)>([\s\S]*?)<\/disk>/g)) {
    const head = `<disk${m[1]}>`;
    const body = m[2]!;
    const driver = /<driver\b[^>]*>/.exec(body)?.[0] ?? '';
    const source = /<source\b[^>]*>/.exec(body)?.[0] ?? '';
    const target = /<target\b[^>]*>/.exec(body)?.[0] ?? '';
    out.push({
      target: attr(target, 'dev') ?? '?',
      device: attr(head, 'device') ?? 'disk',
      type: attr(head, 'type') ?? 'file',
      format: attr(driver, 'type'),
      discard: attr(driver, 'discard'),
      source: attr(source, 'file') ?? attr(source, 'dev'),
      readonly: /<readonly\s*\/>/.test(body),
    });
  }
  return out;
}

/** The live domain XML's disks (what the running QEMU was given). */
export async function liveDisks(uri: string, uuid: string): Promise<LiveDisk[]> {
  checkUuid(uuid);
  return parseLiveDisks(await virsh(uri, ['dumpxml', uuid], 20_000));
}

/** The VM's state and reason now (`domstate --reason`: "running (booted)", "paused (user)"). */
export async function liveState(uri: string, uuid: string): Promise<{ state: string; reason: string | null }> {
  checkUuid(uuid);
  const line = (await virsh(uri, ['domstate', uuid, '--reason'], 20_000)).trim().split('\n')[0] ?? '';
  const m = /^(.*?)\s*\((.*)\)$/.exec(line.trim());
  return m ? { state: m[1]!, reason: m[2]! } : { state: line.trim(), reason: null };
}
