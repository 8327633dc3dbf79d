#!/usr/bin/env node
import { availableParallelism } from 'node:os';
// Reads, writes and compression run on libuv's thread pool: room for I/O plus one compressor per core.
process.env.UV_THREADPOOL_SIZE ??= String(Math.min(1024, availableParallelism() + 8));
// libuv's io_uring path copies page-cache data on the main thread here; the thread pool overlaps it.
process.env.UV_USE_IO_URING ??= '0';
// Never a stack trace: anything that escapes is reported as one line, exit 1.
const die = (e) => {
  process.stderr.write(`sparsify: error: internal error: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
};
process.on('unhandledRejection', die);
process.on('uncaughtException', die);
const { main } = await import('../dist/src/cli/main.js');

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.stderr.write(`sparsify: error: internal error: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
