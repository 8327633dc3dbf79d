#!/usr/bin/env node
// virt-sparsify: the same command under virt-sparsify's name, which its messages then carry
// (the name comes from the path this was started by, as for a symlink named virt-sparsify).
import './sparsify.js';
