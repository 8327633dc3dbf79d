/**
 * Extents against a plain bitmap model: random sets over a small space, every operation compared
 * bit for bit, and the invariants (sorted, disjoint, not touching) checked on every result.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Extents, ExtentsBuilder, type Range } from '../../src/io/extents.js';

const SPACE = 200;

function random(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

function randomRanges(rnd: () => number): Range[] {
  const out: Range[] = [];
  const n = Math.floor(rnd() * 12);
  for (let i = 0; i < n; i++) {
    const s = Math.floor(rnd() * SPACE);
    out.push({ start: s, end: s + Math.floor(rnd() * 30) });
  }
  return out;
}

function bits(ranges: Iterable<Range>): boolean[] {
  const b = new Array<boolean>(SPACE + 64).fill(false);
  for (const r of ranges) for (let i = r.start; i < r.end; i++) b[i] = true;
  return b;
}

function checkInvariants(e: Extents): void {
  let prevEnd = -Infinity;
  for (const r of e) {
    assert.ok(r.start < r.end, 'empty range');
    assert.ok(r.start > prevEnd, 'ranges overlap or touch');
    prevEnd = r.end;
  }
}

describe('Extents', { timeout: 30_000 }, () => {
  test('set operations equal a bitmap model', () => {
    const rnd = random(12345);
    for (let round = 0; round < 2000; round++) {
      const ra = randomRanges(rnd);
      const rb = randomRanges(rnd);
      const a = new Extents(ra);
      const b = new Extents(rb);
      const ba = bits(ra);
      const bb = bits(rb);
      const ops: Array<[Extents, (x: boolean, y: boolean) => boolean]> = [
        [a.union(b), (x, y) => x || y],
        [a.intersect(b), (x, y) => x && y],
        [a.subtract(b), (x, y) => x && !y],
      ];
      for (const [result, f] of ops) {
        checkInvariants(result);
        assert.deepEqual(bits(result), ba.map((x, i) => f(x, bb[i]!)));
      }
      checkInvariants(a);
      assert.deepEqual(Extents.fromFlat(ra.flatMap((r) => [r.start, r.end])).toArray(), a.toArray());
      assert.equal(a.total(), ba.filter(Boolean).length);
      assert.deepEqual(bits(a.complement(0, SPACE)), ba.map((x, i) => i < SPACE && !x));
      const g = 1 + Math.floor(rnd() * 8);
      const aligned = a.alignInward(g);
      checkInvariants(aligned);
      for (const r of aligned) assert.ok(r.start % g === 0 && r.end % g === 0 && a.contains(r.start) && a.contains(r.end - 1));
      const outward = a.alignOutward(g);
      checkInvariants(outward);
      for (const r of outward) assert.ok(r.start % g === 0 && r.end % g === 0);
      assert.deepEqual(bits(outward), bits(a).map((_, i) => ba.slice(Math.floor(i / g) * g, Math.floor(i / g) * g + g).some(Boolean)));
      assert.deepEqual(bits(a.shift(7)), [...Array(7).fill(false), ...ba].slice(0, SPACE + 64));
      for (let i = 0; i < SPACE; i++) assert.equal(a.contains(i), ba[i]);
    }
  });

  test('the builder merges ascending ranges and refuses descending ones', () => {
    const b = new ExtentsBuilder();
    b.add(0, 5);
    b.add(5, 9);
    b.add(3, 12);
    b.add(20, 30);
    assert.deepEqual(b.build().toArray(), [{ start: 0, end: 12 }, { start: 20, end: 30 }]);
    b.add(10, 20);
    assert.throws(() => b.add(5, 8), /ascending/);
  });

  test('a million ranges fit in 16 MiB', () => {
    const b = new ExtentsBuilder();
    for (let i = 0; i < 1_000_000; i++) b.add(i * 10, i * 10 + 5);
    const e = b.build();
    assert.equal(e.count, 1_000_000);
    assert.equal(e.total(), 5_000_000);
    assert.equal(e.intersect(Extents.of(0, 100)).count, 10);
  });
});
