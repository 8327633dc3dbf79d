/**
 * The shape of the source tree: the folders follow the pipeline of DESIGN.md (io → formats →
 * layout → fs → analyze → plan → execute → operations → the library's entry → cli and service),
 * every import points down it or stays in its folder, and no module imports itself back through
 * others (an import circle, type-only imports included: they tie the modules' meaning together
 * just the same).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { join, dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The checkout's src/ (this file runs from test/shape or, built, from dist/test/shape). */
function sourceRoot(): string {
  for (let d = dirname(fileURLToPath(import.meta.url)); d !== dirname(d); d = dirname(d)) {
    if (existsSync(join(d, 'package.json')) && existsSync(join(d, 'src', 'index.ts'))) return join(d, 'src');
  }
  throw new Error('no checkout with src/index.ts above this test');
}
const SRC = sourceRoot();

/** Rank in the pipeline; a module may import from its own rank or lower ones. */
const RANK: Record<string, number> = {
  io: 0,
  formats: 1,
  layout: 2,
  fs: 3,
  analyze: 4,
  plan: 5,
  execute: 6,
  operations: 7,
  '.': 8, // index.ts, version.ts: the library's entry
  service: 9,
  cli: 10, // `sparsify serve` starts the service
};

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

/** Relative imports and re-exports of a module, resolved to source files. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/^\s*(?:import|export)\s[^;]*?\sfrom\s+'(\.{1,2}\/[^']+)'/gms)) {
    const target = resolve(dirname(file), m[1]!).replace(/\.js$/, '.ts');
    if (existsSync(target)) out.push(target);
    else if (existsSync(join(target.replace(/\.ts$/, ''), 'index.ts'))) out.push(join(target.replace(/\.ts$/, ''), 'index.ts'));
  }
  return out;
}

const folderOf = (file: string): string => {
  const rel = relative(SRC, file).split('/');
  return rel.length > 1 ? rel[0]! : '.';
};

/** Strongly connected components with more than one module (Tarjan). */
function circles(graph: Map<string, string[]>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      for (let w = ''; w !== v; ) {
        w = stack.pop()!;
        on.delete(w);
        comp.push(w);
      }
      if (comp.length > 1) out.push(comp.map((f) => relative(SRC, f)).sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  return out;
}

const files = sources(SRC);
const graph = new Map(files.map((f) => [f, importsOf(f)]));

test('every import in src/ points down the pipeline or stays in its folder', { timeout: 30_000 }, () => {
  assert.ok(files.length > 100, `only ${files.length} modules found under ${SRC}`);
  const up: string[] = [];
  for (const [f, deps] of graph) {
    const from = folderOf(f);
    for (const d of deps) {
      const to = folderOf(d);
      assert.ok(from in RANK && to in RANK, `a folder the pipeline does not name: ${from} or ${to}`);
      if (RANK[to]! > RANK[from]!) up.push(`${relative(SRC, f)} imports ${relative(SRC, d)}`);
    }
  }
  assert.deepEqual(up, []);
});

test('no import circles in src/', { timeout: 30_000 }, () => {
  assert.deepEqual(circles(graph), []);
});
