/** The package's root directory (this file runs as dist/src/root.js): build/, package.json. */
import * as path from 'node:path';

export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..');
