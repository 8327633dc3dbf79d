/** Progress events shared by both executors: bytes done of bytes planned. */
export interface Progress {
  done: number;
  total: number;
}

export type ProgressListener = (p: Progress) => void;
