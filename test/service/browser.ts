/** Debian's headless chromium driven by playwright-core, for the UI tests; the UI is built into dist/web when missing. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { run } from '../helpers/fixtures.js';
import { repoRoot } from './service-helpers.js';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** Why the browser tests cannot run here, or undefined. */
export function chromiumMissing(): string | undefined {
  return existsSync(CHROMIUM) ? undefined : `no chromium at ${CHROMIUM} (apt-get install chromium)`;
}

/** Build the web UI if a test run from sources finds none. */
export function ensureWebBuilt(): void {
  if (!existsSync(join(repoRoot, 'dist', 'web', 'index.html'))) run('npm', ['run', 'build:web'], { cwd: repoRoot });
}

/** Flags that keep chromium off this closed network and quiet. */
export function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
}

export const testOutput = join(repoRoot, 'test-output');
