/** The disk list's body kept in blocks: after any mix of changes it is exactly the JSON a full join would give. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BlockedJson } from '../../src/service/list-body.js';

describe('disk list body in blocks', { timeout: 10_000 }, () => {
  it('re-encodes only what changed and always equals the whole list', () => {
    const json = new Map<string, string>();
    const ids = Array.from({ length: 200 }, (_, i) => `d${i}`);
    for (const id of ids) json.set(id, JSON.stringify({ id, v: 0, name: `disk é ${id}` }));
    const body = new BlockedJson('{"disks":[', ']}');
    const expect = (order: string[]) => `{"disks":[${order.map((id) => json.get(id)).join(',')}]}`;
    const text = () => {
      const b = body.encode((id) => json.get(id)!);
      const all = Buffer.concat(b.chunks);
      assert.equal(all.length, b.length);
      return all.toString('utf8');
    };

    body.reset(ids);
    assert.equal(text(), expect(ids));
    const first = body.encode((id) => json.get(id)!).chunks;

    // One disk in the third block changes: only that block is made again.
    json.set('d150', JSON.stringify({ id: 'd150', v: 1, name: 'renamed' }));
    body.touch('d150');
    const second = body.encode((id) => json.get(id)!).chunks;
    assert.equal(second.filter((c, i) => c !== first[i]).length, 1);
    assert.equal(text(), expect(ids));
    JSON.parse(text());

    // A disk gone and one added: a new member list.
    const fewer = ids.filter((id) => id !== 'd3').concat('d200');
    json.set('d200', JSON.stringify({ id: 'd200', v: 0 }));
    body.reset(fewer);
    assert.equal(text(), expect(fewer));

    // No members at all is still a valid body.
    body.reset([]);
    assert.deepEqual(JSON.parse(text()), { disks: [] });
  });
});
