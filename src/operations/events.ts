/** How an operation tells its caller (the CLI, the service) what it is doing. */
import type { ProgressListener } from '../execute/progress.js';

export interface OperationEvents {
  /** A step begins: "Examine source disk". */
  onStatus?: (text: string) => void;
  onWarning?: (text: string) => void;
  onInfo?: (text: string) => void;
  onTrace?: (text: string) => void;
  /** Details for -v. */
  onVerbose?: (text: string) => void;
  onProgress?: ProgressListener;
  /** Abort between ranges; the operation then fails with "quit (^C) at user request". */
  signal?: AbortSignal;
}
