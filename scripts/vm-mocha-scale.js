'use strict';
/**
 * Loaded with `mocha --require` by scripts/vm-init.sh inside an emulated VM
 * (make vm-test without KVM), where everything runs several times slower than
 * on the host: multiplies every mocha timeout (the command line's, a suite's
 * or a test's own `this.timeout(ms)`) by NEUV_VM_TIME_SCALE. A test that
 * passes on the host in 10 s should not fail in the VM only because it took
 * 40. Timeouts 0 (none) stay 0. Deadlines a test computes itself are not
 * covered: those can read NEUV_BPF_TEST_TIME_SCALE (the same factor).
 */
const path = require('node:path');

const scale = Number(process.env.NEUV_VM_TIME_SCALE || '1');
if (Number.isFinite(scale) && scale > 1) {
  // The same module instance mocha itself uses (the repo's node_modules).
  const Runnable = require(path.join(process.cwd(), 'node_modules', 'mocha', 'lib', 'runnable'));
  const milliseconds = require(path.join(process.cwd(), 'node_modules', 'ms'));
  const timeout = Runnable.prototype.timeout;
  // Suites hand their timeout to each test and hook through this setter, so
  // scaling here (and not in Suite's) scales every value exactly once.
  Runnable.prototype.timeout = function (ms) {
    if (!arguments.length) return timeout.call(this);
    let v = typeof ms === 'string' ? milliseconds(ms) : ms;
    if (typeof v === 'number' && v > 0) v = Math.min(v * scale, 2 ** 31 - 2);
    return timeout.call(this, v);
  };
}
