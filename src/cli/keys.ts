/**
 * The key options, libguestfs style: `--key ID:key:KEY_STRING`, `--key ID:file:FILENAME`,
 * `--keys-from-stdin` and `--echo-keys`, turned into the KeyStore the library takes.
 *
 * --keys-from-stdin reads one key per line. From a pipe or file, every line is read up front and
 * tried on every encrypted volume that no --key names. On a terminal, each such volume gets a
 * prompt, and what is typed is not echoed unless --echo-keys is given.
 */
import { SparsifyError } from '../io/errors.js';
import { KeyStore, parseKeySelector, type KeyPrompt, type KeyRequest, type KeySelector } from '../layout/luks/keys.js';

/** Enough for any passphrase list; a larger stdin is not a list of keys. */
const MAX_STDIN_KEYS_BYTES = 1 << 20;

export interface KeyOptions {
  keys: readonly string[];
  keysFromStdin: boolean;
  echoKeys: boolean;
}

/** All of stdin (a pipe or a file), bounded; the caller zeroes it. */
async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of process.stdin) {
    const b = chunk as Buffer;
    total += b.length;
    chunks.push(b);
    if (total > MAX_STDIN_KEYS_BYTES) {
      for (const c of chunks) c.fill(0);
      throw new SparsifyError(`--keys-from-stdin: more than ${MAX_STDIN_KEYS_BYTES} bytes on standard input; expected one key per line`);
    }
  }
  const all = Buffer.concat(chunks);
  for (const c of chunks) c.fill(0);
  return all;
}

/** Split into lines (a trailing \r dropped, empty lines skipped), each its own Buffer; zeroes `all`. */
export function keyLines(all: Buffer): Buffer[] {
  const keys: Buffer[] = [];
  let start = 0;
  while (start < all.length) {
    let end = all.indexOf(0x0a, start);
    if (end < 0) end = all.length;
    let stop = end;
    if (stop > start && all[stop - 1] === 0x0d) stop--;
    if (stop > start) keys.push(Buffer.from(all.subarray(start, stop)));
    start = end + 1;
  }
  all.fill(0);
  return keys;
}

/** Read one line from the terminal in raw mode, echoing it only when asked. */
function readTerminalLine(prompt: string, echo: boolean): Promise<Buffer> {
  const stdin = process.stdin;
  process.stderr.write(prompt);
  return new Promise((resolve, reject) => {
    const typed: number[] = [];
    const finish = (err?: Error): void => {
      stdin.removeListener('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
      const key = Buffer.from(typed);
      typed.fill(0);
      if (err) {
        key.fill(0);
        reject(err);
      } else resolve(key);
    };
    const onData = (chunk: Buffer): void => {
      for (const byte of chunk) {
        if (byte === 0x0d || byte === 0x0a) return finish();
        if (byte === 0x03) return finish(new SparsifyError('quit (^C) at user request'));
        if (byte === 0x04 && typed.length === 0) return finish();
        if (byte === 0x7f || byte === 0x08) {
          if (typed.length) {
            typed[typed.length - 1] = 0;
            typed.pop();
            if (echo) process.stderr.write('\b \b');
          }
          continue;
        }
        typed.push(byte);
        if (echo) process.stderr.write(Buffer.from([byte]));
      }
      chunk.fill(0);
    };
    stdin.setRawMode(true);
    stdin.resume();
    stdin.on('data', onData);
  });
}

function terminalPrompt(echo: boolean): KeyPrompt {
  return async (req: KeyRequest) => {
    const key = await readTerminalLine(`Enter key or passphrase ("${req.device}"): `, echo);
    if (key.length === 0) return undefined;
    return key;
  };
}

/** The KeyStore for these options (empty when none were given); the caller disposes it. */
export async function keyStoreFromOptions(o: KeyOptions): Promise<KeyStore> {
  const selectors: KeySelector[] = [];
  try {
    for (const text of o.keys) selectors.push(await parseKeySelector(text));
    if (!o.keysFromStdin) return new KeyStore(selectors);
    if (process.stdin.isTTY) return new KeyStore(selectors, { prompt: terminalPrompt(o.echoKeys) });
    return new KeyStore(selectors, { shared: keyLines(await readStdin()) });
  } catch (e) {
    for (const s of selectors) s.key.fill(0);
    throw e;
  }
}
