/**
 * A thread of the engine pool: runs one sparsify operation or one analysis at a time, away from
 * the main thread that answers the API, and at a lower CPU priority, so a busy host still answers
 * quickly. Progress, warnings and status lines go back on the task's port; an abort comes in on it
 * and stops the engine between ranges, as a cancel does in the CLI.
 */
import { setPriority } from 'node:os';
import type { MessagePort } from 'node:worker_threads';
import { sparsifyInPlace, sparsifyCopy, openImage, analyzeDisk, toJson, type OperationEvents } from '../../index.js';
import { gettid } from '../../io/syscalls.js';
import type { AnalyzeResult, EngineTask, MainMessage, WorkerMessage } from './protocol.js';

/** nice 10: background work yields the CPU to the API and to other hosts' requests. */
const NICE = 10;

try {
  setPriority(gettid(), NICE);
} catch {
  // Not allowed here: run at the normal priority.
}

export default async function run({ task, port }: { task: EngineTask; port: MessagePort }): Promise<AnalyzeResult | undefined> {
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
    switch (task.op) {
      case 'in-place':
        await sparsifyInPlace({ path: task.path, format: task.format, ignore: task.ignore, zero: task.zero, ...events });
        return undefined;
      case 'copy':
        await sparsifyCopy({ input: task.input, output: task.output, format: task.format, convert: task.convert, ignore: task.ignore, zero: task.zero, ...events });
        return undefined;
      case 'analyze': {
        const warnings: string[] = [];
        const image = await openImage(task.path, { lock: 'none', format: task.format, warn: (w) => warnings.push(w) });
        try {
          return { map: toJson(await analyzeDisk(image)), warnings };
        } finally {
          await image.close();
        }
      }
    }
  } finally {
    port.close();
  }
}
