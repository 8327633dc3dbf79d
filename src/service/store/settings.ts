/** Small named values: the policy, and the time slots that cluster-wide duties claim. */
import type { Db } from './db.js';

export class Settings {
  constructor(private readonly db: Db) {}

  async get(key: string): Promise<string | undefined> {
    return (await this.db.get<{ value: string }>('SELECT value FROM settings WHERE key = ?', [key]))?.value;
  }

  async set(key: string, value: string): Promise<void> {
    await this.db.run('INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [key, value]);
  }

  /**
   * Claim the duty named `key` for the next `intervalMs` (database clock): true for exactly one
   * caller per interval across the cluster, however many hosts ask.
   */
  async claimSlot(key: string, intervalMs: number): Promise<boolean> {
    const now = this.db.nowMs;
    const rows = await this.db.all(
      `INSERT INTO settings (key, value) VALUES (?, CAST(${now} AS TEXT))
       ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE CAST(settings.value AS BIGINT) + ? <= ${now}
       RETURNING key`,
      [key, intervalMs],
    );
    return rows.length === 1;
  }
}
