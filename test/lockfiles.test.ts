/**
 * Root hooks around the whole mocha run: no suite leaves a lock, journal or
 * state file under /run/neuv-bpf for a pin root it named (makePinRoot removes
 * its own; suites that name pin roots another way call removeLockFiles). Only
 * the names this process made count (uniqueName), so another neuv-bpf on the
 * machine, or a second test run beside this one, does not show up here.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { LOCK_DIR } from '../src/lock';
import { lockFilesOfThisProcess } from './helpers';

let before0 = new Set<string>();

before(function () {
  before0 = new Set(fs.existsSync(LOCK_DIR) ? fs.readdirSync(LOCK_DIR) : []);
});

after(function () {
  assert.deepEqual(lockFilesOfThisProcess(before0), [], `the run left files under ${LOCK_DIR} for pin roots its tests named`);
});
