/** What the service's main thread and the engine's worker threads say to each other. */
import type { DiskMapJson, InPlaceReport, InPlaceRequest } from '../../index.js';

/** Every task may name the service's LUKS keys file; the worker reads it itself, so keys never travel between threads. */
export type EngineTask = (
  /** compact: as the library's (true, false, or 'auto': only where the storage cannot release space). */
  | { op: 'in-place'; path: string; format: string; ignore: string[]; zero: string[]; compact: NonNullable<InPlaceRequest['compact']> }
  /** keepBacking: the output is a qcow2 overlay on the input's backing file (copy-and-replace of a chain's leaf). */
  | { op: 'copy'; input: string; output: string; format: string; convert: string; ignore: string[]; zero: string[]; keepBacking?: boolean }
  | { op: 'analyze'; path: string; format?: string }
  /** Answers at once: the threads loaded the engine. */
  | { op: 'ping' }
) & { keysFile?: string };

/** The in-place report's figures, without its disk map and plan (which stay in the thread). */
export type InPlaceSummary = Pick<
  InPlaceReport,
  'format' | 'bytesDiscarded' | 'allocatedBefore' | 'allocatedAfter' | 'released' | 'compacted' | 'endBefore' | 'endAfter' | 'bytesMoved' | 'releasedByTruncation' | 'compactableEnd' | 'isBlockDevice'
>;

export interface AnalyzeResult {
  map: DiskMapJson;
  warnings: string[];
}

/** Worker -> main thread, on the task's port. 'end' is the task's last message: everything it sent came before. */
export type WorkerMessage =
  | { type: 'progress'; done: number; total: number }
  | { type: 'warning'; text: string }
  | { type: 'status'; text: string }
  | { type: 'end' };

/** Main thread -> worker. */
export type MainMessage = { type: 'abort' };
