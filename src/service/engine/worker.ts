/**
 * A thread of the engine pool: runs one sparsify operation or one analysis at a time, away from
 * the main thread that answers the API, and at a lower CPU priority, so a busy host still answers
 * quickly. Progress, warnings and status lines go back on the task's port; an abort comes in on it
 * and stops the engine between ranges, as a cancel does in the CLI.
 */
import { setPriority } from 'node:os';
import type { MessagePort } from 'node:worker_threads';
import { stat } from 'node:fs/promises';
import { sparsifyInPlace, sparsifyCopy, openImage, analyzeDisk, toJson, loadKeysFile, type OperationEvents, type KeyProvider } from '../../index.js';
import { gettid } from '../../io/syscalls.js';
import type { AnalyzeResult, EngineTask, InPlaceSummary, MainMessage, WorkerMessage } from './protocol.js';

/**
 * nice 19, as oVirt's vdsm runs qemu-img: background work yields the CPU to the API, to the
 * database and to other hosts' requests, and still uses every idle cycle.
 */
const NICE = 19;

try {
  setPriority(gettid(), NICE);
} catch {
  // Not allowed here: run at the normal priority.
}

/** The keys file as last read, again whenever it changes; its keys are zeroed when replaced. */
let keys: { path: string; version: string; store: KeyProvider } | undefined;

async function keysOf(path: string | undefined): Promise<KeyProvider | undefined> {
  if (!path) return undefined;
  const st = await stat(path);
  const version = `${st.ino}:${st.mtimeMs}:${st.size}:${st.mode}`;
  if (keys?.path !== path || keys.version !== version) {
    keys?.store.dispose();
    keys = undefined;
    keys = { path, version, store: await loadKeysFile(path) };
  }
  return keys.store;
}

export default async function run({ task, port }: { task: EngineTask; port: MessagePort }): Promise<AnalyzeResult | InPlaceSummary | undefined> {
  const ctl = new AbortController();
  const send = (m: WorkerMessage) => port.postMessage(m);
  port.on('message', (m: MainMessage) => {
    if (m.type === 'abort') ctl.abort();
  });
  const events: OperationEvents = {
    signal: ctl.signal,
    onProgress: (p) => send({ type: 'progress', done: p.done, total: p.total }),
    onWarning: (text) => send({ type: 'warning', text }),
    onStatus: (text) => send({ type: 'status', text }),
  };
  try {
    if (task.op === 'ping') return undefined;
    const k = await keysOf(task.keysFile);
    switch (task.op) {
      case 'in-place': {
        const r = await sparsifyInPlace({ path: task.path, format: task.format, ignore: task.ignore, zero: task.zero, compact: task.compact, keys: k, ...events });
        return {
          format: r.format,
          bytesDiscarded: r.bytesDiscarded,
          allocatedBefore: r.allocatedBefore,
          allocatedAfter: r.allocatedAfter,
          released: r.released,
          compacted: r.compacted,
          endBefore: r.endBefore,
          endAfter: r.endAfter,
          bytesMoved: r.bytesMoved,
          releasedByTruncation: r.releasedByTruncation,
          compactableEnd: r.compactableEnd,
          isBlockDevice: r.isBlockDevice,
        };
      }
      case 'copy':
        await sparsifyCopy({ input: task.input, output: task.output, format: task.format, convert: task.convert, ignore: task.ignore, zero: task.zero, keepBacking: task.keepBacking, keys: k, ...events });
        return undefined;
      case 'analyze': {
        const warnings: string[] = [];
        const image = await openImage(task.path, { lock: 'none', format: task.format, warn: (w) => warnings.push(w) });
        try {
          return { map: toJson(await analyzeDisk(image, { keys: k })), warnings };
        } finally {
          await image.close();
        }
      }
    }
  } finally {
    send({ type: 'end' });
    port.close();
  }
}
