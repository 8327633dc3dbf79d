/**
 * The sparsify CLI for the in-place tests (run from source through tsx, or compiled), with the
 * formats in-place mode handles registered.
 */
import Module from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { registerFormats } from './crash-helpers.js';

// main.ts finds package.json where the compiled tree has it; from source it lives two levels up.
const here = dirname(fileURLToPath(import.meta.url));
const pkgFromSource = join(here, '..', '..', 'package.json');
type Resolver = (request: string, parent: { filename?: string } | undefined, ...rest: unknown[]) => string;
const M = Module as unknown as { _resolveFilename: Resolver };
const original = M._resolveFilename;
M._resolveFilename = function (this: unknown, request, parent, ...rest) {
  if (request === '../../../package.json' && parent?.filename?.endsWith('.ts') && existsSync(pkgFromSource)) return pkgFromSource;
  return original.call(this, request, parent, ...rest);
};

registerFormats();
const { main } = await import('../../src/cli/main.js');
process.exitCode = await main(process.argv.slice(2));
