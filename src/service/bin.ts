/** Run the service directly (tests, development): the same as `sparsify serve ARGS`. */
import { serveMain } from './cli.js';

serveMain(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`sparsify serve: error: internal error: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  },
);
