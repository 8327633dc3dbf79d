/**
 * A small LRU of promises keyed by number, so concurrent readers of the same table share one read
 * and memory stays bounded by `capacity` entries.
 */
export class PromiseLru<V> {
  private readonly map = new Map<number, Promise<V>>();

  constructor(private readonly capacity: number) {}

  get(key: number, load: () => Promise<V>): Promise<V> {
    const hit = this.map.get(key);
    if (hit) {
      // Re-insert to mark as most recently used.
      this.map.delete(key);
      this.map.set(key, hit);
      return hit;
    }
    const p = load();
    // A failed load must not stay cached: the next caller retries (and reports the error again).
    p.catch(() => {
      if (this.map.get(key) === p) this.map.delete(key);
    });
    this.map.set(key, p);
    while (this.map.size > this.capacity) {
      const oldest = this.map.keys().next().value as number;
      this.map.delete(oldest);
    }
    return p;
  }
}
