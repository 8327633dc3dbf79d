/** `sparsify serve`: flags for the service (filled in below). */
export async function serveMain(_argv: readonly string[]): Promise<number> {
  process.stderr.write('sparsify: serve: not built yet\n');
  return 1;
}
