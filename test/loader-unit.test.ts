/** Unit tests (no kernel): src/loader.ts without the kernel: the privilege check and the pin root. */
import assert from 'node:assert/strict';
import { checkPrivileges, pinRootFrom } from '../src/pins';
import * as pkg from '../src/index';
import { DpClient } from '../src/dp/client';

describe('privilege check', function () {
  const status = (eff: string) => `Name:\tnode\nCapEff:\t${eff}\n`;
  it('passes with CAP_NET_ADMIN + CAP_BPF, or CAP_SYS_ADMIN in place of CAP_BPF', function () {
    checkPrivileges(status('000001ffffffffff'));
    checkPrivileges(status((1n << 12n | 1n << 39n).toString(16)));
    checkPrivileges(status((1n << 12n | 1n << 21n).toString(16)));
  });
  it('names what is missing', function () {
    assert.throws(() => checkPrivileges(status('0')), /needs root \(CAP_BPF and CAP_NET_ADMIN\): missing CAP_NET_ADMIN and CAP_BPF/);
    assert.throws(() => checkPrivileges(status((1n << 39n).toString(16))), /missing CAP_NET_ADMIN$/);
  });
});

describe('pin root', function () {
  it('flag, then NEUV_BPF_PIN_ROOT, then /sys/fs/bpf/neuv; absolute only', function () {
    assert.equal(pinRootFrom(undefined, {}), '/sys/fs/bpf/neuv');
    assert.equal(pinRootFrom(undefined, { NEUV_BPF_PIN_ROOT: '/sys/fs/bpf/x/' }), '/sys/fs/bpf/x');
    assert.equal(pinRootFrom('/sys/fs/bpf/y', { NEUV_BPF_PIN_ROOT: '/sys/fs/bpf/x' }), '/sys/fs/bpf/y');
    assert.throws(() => pinRootFrom('relative/dir', {}), /must be an absolute path/);
  });
});

describe("the package's index (unit)", function () {
  it("exports NeuVector's DP client (DpClient, docs/neuvector-dp.md), as it exports the service's", function () {
    assert.equal(pkg.DpClient, DpClient);
    assert.equal(typeof pkg.ServiceClient, 'function');
  });
});
