/** The sparsify CLI run from this tree (source through tsx, or compiled), for the in-place tests. */
const { main } = await import('../../src/cli/main.js');
process.exitCode = await main(process.argv.slice(2));
