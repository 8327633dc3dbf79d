/**
 * NBD addresses (NetworkBlockDevice/nbd doc/uri.md): nbd://host[:port]/export,
 * nbd+unix:///export?socket=PATH and the TLS forms nbds:// and nbds+unix://. The export name is the
 * path after its one leading slash, percent-decoded. Query keys used: socket, tls-certificates
 * (a folder holding ca-cert.pem, client-cert.pem, client-key.pem), tls-verify-peer, tls-hostname;
 * tls-psk-file is recognised and refused. Messages show `display`, which never carries a password
 * or any query value but the socket path.
 */
import { SparsifyError } from '../errors.js';
import { DEFAULT_PORT } from './protocol.js';

export interface NbdAddress {
  /** Safe to print: no password, no TLS file paths. */
  display: string;
  tls: boolean;
  /** TCP host and port, or a Unix socket path. */
  host?: string;
  port?: number;
  socket?: string;
  exportName: string;
  tlsCertificates?: string;
  tlsVerifyPeer: boolean;
  tlsHostname?: string;
}

const SCHEMES = new Set(['nbd:', 'nbds:', 'nbd+unix:', 'nbds+unix:']);

/** Does this operand name an NBD export rather than a file? */
export function isNbdUri(s: string): boolean {
  return /^nbds?(\+unix)?:\/\//i.test(s);
}

export function parseNbdUri(text: string): NbdAddress {
  let u: URL;
  // Never echo the operand itself: it may hold a password.
  const scheme = /^[a-z+]+:/i.exec(text)?.[0]?.toLowerCase() ?? '';
  try {
    u = new URL(text);
  } catch {
    throw new SparsifyError(`${scheme}//...: not a valid NBD address (expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)`);
  }
  const proto = u.protocol.toLowerCase();
  if (!SCHEMES.has(proto)) throw new SparsifyError(`${proto}//...: not an NBD address`);
  const unix = proto.endsWith('+unix:');
  const tls = proto.startsWith('nbds');
  let exportName: string;
  try {
    exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  } catch {
    throw new SparsifyError(`${proto}//...: the export name is not valid percent-encoding`);
  }
  const q = u.searchParams;
  const user = u.username ? `${decodeURIComponent(u.username)}@` : '';
  const encodedExport = encodeURI(exportName);
  let display: string;
  const base: Omit<NbdAddress, 'display'> = {
    tls,
    exportName,
    tlsVerifyPeer: q.get('tls-verify-peer') !== 'false',
    ...(q.get('tls-certificates') ? { tlsCertificates: q.get('tls-certificates')! } : {}),
    ...(q.get('tls-hostname') ? { tlsHostname: q.get('tls-hostname')! } : {}),
  };
  if (q.has('tls-psk-file')) throw new SparsifyError(`${proto}//${user}...: TLS with a pre-shared key (tls-psk-file) is not supported yet; use X.509 certificates (tls-certificates=DIR)`);
  if (unix) {
    const socket = q.get('socket');
    if (!socket) throw new SparsifyError(`${proto}//${user}/${encodedExport}: an nbd+unix address needs ?socket=PATH`);
    if (u.hostname) throw new SparsifyError(`${proto}//${u.hostname}/...: an nbd+unix address has no host (write ${proto}///EXPORT?socket=PATH)`);
    display = `${proto}//${user}/${encodedExport}?socket=${socket}`;
    return { ...base, display, socket };
  }
  if (!u.hostname) throw new SparsifyError(`${proto}//${user}/${encodedExport}: no host`);
  const port = u.port ? Number(u.port) : DEFAULT_PORT;
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  display = `${proto}//${user}${u.hostname}${u.port ? `:${u.port}` : ''}/${encodedExport}`;
  return { ...base, display, host, port };
}

/** Replace any password in an NBD address with nothing, for operands echoed in messages. */
export function safeDisplay(text: string): string {
  if (!isNbdUri(text)) return text;
  try {
    return parseNbdUri(text).display;
  } catch {
    return text.replace(/\/\/[^/@]*@/, '//');
  }
}
