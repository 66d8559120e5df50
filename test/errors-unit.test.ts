/** Unit tests (no kernel): src/errors.ts: errno names and exit codes. */
import assert from 'node:assert/strict';
import { KernelError, errnoName, ExitCode, UsageError } from '../src/errors';

describe('errors', function () {
  it('names errnos and maps classes to exit codes', function () {
    assert.equal(errnoName(1), 'EPERM');
    assert.equal(errnoName(-17), 'EEXIST');
    assert.equal(errnoName(95), 'EOPNOTSUPP');
    const eperm = new KernelError('attach vex1234-eth0 ingress', 1);
    assert.equal(eperm.message, 'attach vex1234-eth0 ingress: Operation not permitted (EPERM): needs root (CAP_BPF and CAP_NET_ADMIN)');
    assert.equal(eperm.code, ExitCode.PERMISSION);
    assert.equal(new KernelError('x', 19).code, ExitCode.NOT_FOUND);
    assert.equal(new KernelError('x', 22).code, ExitCode.KERNEL);
    assert.equal(new KernelError('x', 13, 'verifier', ExitCode.KERNEL).code, ExitCode.KERNEL);
    assert.equal(new UsageError('bad').code, ExitCode.USAGE);
  });
});
