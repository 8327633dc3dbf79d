/**
 * LUKS keys: who gives them and which volume each is for. The CLI builds a KeyStore from
 * `--key ID:key:KEY` / `--key ID:file:FILENAME` / `--keys-from-stdin` (libguestfs's conventions);
 * the service builds the same structure from its keys file (`loadKeysFile`).
 *
 * ID is a device name (/dev/sda2, /dev/VG/LV), a LUKS UUID, or `all`. Keys are Buffers so they can
 * be zeroed: `dispose()` overwrites every one, and nothing here ever prints a key.
 */
import { readFile, stat } from 'node:fs/promises';
import { SparsifyError } from '../../io/errors.js';
import { canonicalDevice, mapperToLvm } from '../device-names.js';

/** The encrypted volume a key is asked for. */
export interface KeyRequest {
  /** libguestfs-style name of the LUKS container: /dev/sda2, /dev/VG/LV. */
  device: string;
  /** The LUKS UUID from its header ('' when the header has none). */
  uuid: string;
}

export interface KeyProvider {
  /**
   * The keys to try on this volume, most specific first; empty when there are none (the volume is
   * kept whole). The buffers stay owned by the provider: do not keep them past `dispose()`.
   */
  keysFor(req: KeyRequest): Promise<Buffer[]>;
  /** The IDs given that matched no encrypted volume so far, for a warning (empty when not tracked). */
  unmatched(): string[];
  /** Overwrite every key held with zeros. */
  dispose(): void;
}

/** One `--key` (or keys-file line): a key for the volume(s) that ID names. */
export interface KeySelector {
  /** A device name, a LUKS UUID, or `all`. */
  id: string;
  key: Buffer;
}

/** Asks for a key interactively (the terminal prompt of --keys-from-stdin); undefined: none. */
export type KeyPrompt = (req: KeyRequest) => Promise<Buffer | undefined>;

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Does selector ID `id` name this volume? */
function selects(id: string, req: KeyRequest): boolean {
  if (id === 'all') return true;
  if (UUID_RE.test(id)) return req.uuid !== '' && id.toLowerCase() === req.uuid.toLowerCase();
  const device = canonicalDevice(req.device);
  return canonicalDevice(id) === device || mapperToLvm(id) === device;
}

export class KeyStore implements KeyProvider {
  private readonly used = new Set<KeySelector>();
  /** Keys typed at the prompt, one per volume asked about, zeroed with the rest. */
  private readonly prompted = new Map<string, Buffer>();

  /**
   * @param selectors keys with their IDs, exact device/UUID matches tried before `all`
   * @param opts.shared keys for every volume, tried last (the lines of a piped --keys-from-stdin)
   * @param opts.prompt asks for a key for a volume no selector names (--keys-from-stdin on a terminal)
   * @param opts.reportUnmatched warn about IDs that match nothing (the CLI: one disk per run);
   *   off for a store shared by many disks, such as the service's keys file
   */
  constructor(
    private readonly selectors: readonly KeySelector[],
    private readonly opts: { shared?: readonly Buffer[]; prompt?: KeyPrompt; reportUnmatched?: boolean } = {},
  ) {}

  async keysFor(req: KeyRequest): Promise<Buffer[]> {
    const matching = this.selectors.filter((s) => selects(s.id, req));
    // Keys naming this volume come before `all`.
    matching.sort((a, b) => Number(a.id === 'all') - Number(b.id === 'all'));
    for (const s of matching) this.used.add(s);
    const keys = [...matching.map((s) => s.key), ...(this.opts.shared ?? [])];
    if (keys.length === 0 && this.opts.prompt) {
      const key = this.prompted.get(req.device) ?? (await this.opts.prompt(req));
      if (key) {
        this.prompted.set(req.device, key);
        keys.push(key);
      }
    }
    return keys;
  }

  unmatched(): string[] {
    if (!(this.opts.reportUnmatched ?? true)) return [];
    return this.selectors.filter((s) => !this.used.has(s) && s.id !== 'all').map((s) => s.id);
  }

  dispose(): void {
    for (const s of this.selectors) s.key.fill(0);
    for (const k of this.opts.shared ?? []) k.fill(0);
    for (const k of this.prompted.values()) k.fill(0);
  }
}

/** The first line of a key file, without its newline (libguestfs reads `file:` keys this way). */
export function firstLine(content: Buffer): Buffer {
  let end = content.indexOf(0x0a);
  if (end < 0) end = content.length;
  if (end > 0 && content[end - 1] === 0x0d) end--;
  const key = Buffer.from(content.subarray(0, end));
  content.fill(0);
  return key;
}

/**
 * Parse one selector: `ID:key:KEY_STRING` or `ID:file:FILENAME`. `ID:clevis` is refused. The
 * message of an error never repeats the key.
 */
export async function parseKeySelector(text: string, where = '--key'): Promise<KeySelector> {
  // ID may itself hold colons only as a device name never does; split at the method.
  const m = /^(.+?):(key|file|clevis)(?::([\s\S]*))?$/.exec(text);
  if (!m) {
    const id = text.split(':')[0] ?? '';
    throw new SparsifyError(`${where} ${id}:...: expected ID:key:KEY_STRING or ID:file:FILENAME (ID is a device, a LUKS UUID or 'all')`);
  }
  const [, id, method, rest] = m as unknown as [string, string, string, string | undefined];
  if (method === 'clevis') {
    throw new SparsifyError(`${where} ${id}:clevis: Clevis/Tang network unlocking is not supported; give the volume's passphrase with ID:key:, ID:file: or --keys-from-stdin`);
  }
  if (rest === undefined || rest === '') throw new SparsifyError(`${where} ${id}:${method}: the ${method === 'key' ? 'key' : 'file name'} is missing`);
  if (method === 'key') return { id, key: Buffer.from(rest, 'utf8') };
  let content: Buffer;
  try {
    content = await readFile(rest);
  } catch (e) {
    throw new SparsifyError(`${where} ${id}:file:${rest}: cannot read the key file (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  return { id, key: firstLine(content) };
}

/**
 * The service's keys file, keyed by LUKS UUID, readable by its owner only (mode 0600, or it is
 * refused). Either a JSON object `{ "UUID": "passphrase", ... }`, or lines in the `--key` form
 * `UUID:key:PASSPHRASE` / `UUID:file:FILENAME` (blank lines and `#` comments skipped).
 */
export async function loadKeysFile(path: string): Promise<KeyStore> {
  let st;
  try {
    st = await stat(path);
  } catch (e) {
    throw new SparsifyError(`keys file ${path}: cannot read it (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  if (!st.isFile()) throw new SparsifyError(`keys file ${path}: not a regular file`);
  const mode = st.mode & 0o777;
  if (mode !== 0o600) {
    throw new SparsifyError(`keys file ${path} has mode 0${mode.toString(8)}: it holds LUKS keys and must be mode 0600 (chmod 600 ${path})`);
  }
  const content = await readFile(path);
  try {
    const isJson = /^\s*\{/.test(content.toString('latin1', 0, Math.min(64, content.length)));
    const selectors = isJson ? jsonSelectors(content, path) : await lineSelectors(content, path);
    for (const s of selectors) {
      if (!UUID_RE.test(s.id)) {
        for (const x of selectors) x.key.fill(0);
        throw new SparsifyError(`keys file ${path}: '${s.id}' is not a LUKS UUID (keys are looked up by the volume's UUID)`);
      }
    }
    return new KeyStore(selectors, { reportUnmatched: false });
  } finally {
    content.fill(0);
  }
}

function jsonSelectors(content: Buffer, path: string): KeySelector[] {
  let doc: unknown;
  try {
    doc = JSON.parse(content.toString('utf8'));
  } catch {
    // The parser's message may quote the file's text, which holds keys: say only where.
    throw new SparsifyError(`keys file ${path}: not valid JSON`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new SparsifyError(`keys file ${path}: expected a JSON object mapping LUKS UUIDs to keys`);
  return Object.entries(doc as Record<string, unknown>).map(([id, key]) => {
    if (typeof key !== 'string' || key === '') throw new SparsifyError(`keys file ${path}: the key for ${id} must be a non-empty string`);
    return { id, key: Buffer.from(key, 'utf8') };
  });
}

async function lineSelectors(content: Buffer, path: string): Promise<KeySelector[]> {
  const out: KeySelector[] = [];
  const lines = content.toString('utf8').split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    if (line.trim() === '' || line.trimStart().startsWith('#')) continue;
    try {
      out.push(await parseKeySelector(line, `keys file ${path} line ${i + 1}:`));
    } catch (e) {
      for (const s of out) s.key.fill(0);
      throw e;
    }
  }
  return out;
}
