/**
 * A storage domain's identity: a UUID in a metadata file at the folder's root, written when the
 * folder is first attached. Hosts that mount the same share at different paths read the same
 * file, so they agree on which domain it is, and disks are named by domain UUID and relative path.
 */
import { randomUUID } from 'node:crypto';
import { openSync, writeSync, fsyncSync, closeSync, linkSync, unlinkSync, mkdirSync, realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';

export const DOMAIN_FILE = '.sparsify-domain.json';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** A share whose server is gone can block a read forever; the caller stops waiting after this. */
const READ_TIMEOUT_MS = 5000;

export interface DomainIdentity {
  id: string;
  name: string;
  createdAt: number;
}

export class DomainError extends Error {}

function parse(text: string, file: string): DomainIdentity {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    throw new DomainError(`${file} is not valid JSON`);
  }
  const r = o as Partial<DomainIdentity>;
  if (!r || typeof r.id !== 'string' || !UUID.test(r.id) || typeof r.name !== 'string' || typeof r.createdAt !== 'number') {
    throw new DomainError(`${file} does not hold a domain identity ({"id": UUID, "name", "createdAt"})`);
  }
  return { id: r.id, name: r.name, createdAt: r.createdAt };
}

/** Read the identity of the domain at `root`; a clear DomainError when it is missing, unreadable or stalls. */
export async function readIdentity(root: string): Promise<DomainIdentity> {
  const file = join(root, DOMAIN_FILE);
  let timer: NodeJS.Timeout | undefined;
  const stall = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DomainError(`${file} did not answer in ${READ_TIMEOUT_MS / 1000} s (is the share reachable?)`)), READ_TIMEOUT_MS);
  });
  try {
    const text = await Promise.race([readFile(file, 'utf8'), stall]);
    return parse(text, file);
  } catch (e) {
    if (e instanceof DomainError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new DomainError(code === 'ENOENT' ? `${file} is missing (the domain is not mounted here, or was never attached)` : `${file}: ${(e as Error).message}`);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Attach the folder at `path`: read its identity, or create one when the folder has none yet
 * (creating the folder too). Two hosts attaching at once agree: the file is published with
 * link(2), which fails if the other got there first, and then theirs is read.
 */
export async function attachDomain(path: string): Promise<{ root: string; identity: DomainIdentity; created: boolean }> {
  mkdirSync(path, { recursive: true });
  const root = realpathSync(path);
  try {
    return { root, identity: await readIdentity(root), created: false };
  } catch (e) {
    if (!(e instanceof DomainError) || !/is missing/.test(e.message)) throw e;
  }
  const identity: DomainIdentity = { id: randomUUID(), name: basename(root), createdAt: Date.now() };
  const final = join(root, DOMAIN_FILE);
  const temp = `${final}.${identity.id}.tmp`;
  const fd = openSync(temp, 'wx', 0o644);
  try {
    writeSync(fd, JSON.stringify(identity, null, 2) + '\n');
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(temp, final);
    return { root, identity, created: true };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    return { root, identity: await readIdentity(root), created: false };
  } finally {
    unlinkSync(temp);
  }
}
