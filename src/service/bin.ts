/** Run the service directly (tests, development): the same as `sparsify serve ARGS`. */
import { availableParallelism } from 'node:os';
import { serveMain } from './cli.js';

// Reads, writes and compression run on libuv's thread pool (as bin/sparsify.js sizes it); set
// before its first use, which loading the modules above does not make.
process.env.UV_THREADPOOL_SIZE ??= String(Math.min(1024, availableParallelism() + 8));

serveMain(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`sparsify serve: error: internal error: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  },
);
