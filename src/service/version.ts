/** The version of this sparsify (package.json), as hosts record it in the cluster. */
export { VERSION } from '../version.js';
