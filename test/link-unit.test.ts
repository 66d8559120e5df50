/** Unit tests (no kernel): src/link.ts: interface name validation. */
import assert from 'node:assert/strict';
import { UsageError } from '../src/errors';
import { validateIfName } from '../src/link';

describe('interface name validation', function () {
  it('accepts what Linux accepts', function () {
    for (const n of ['eth0', 'vex1a2b-eth0', 'vin-x.1', 'a', '123456789012345', 'br_0@x']) assert.equal(validateIfName(n), n);
  });
  it('refuses empty, long, dot names, spaces, slashes and shell metacharacters', function () {
    for (const n of ['', '1234567890123456', '.', '..', 'a b', 'a/b', 'a:b', 'a;rm', '$(x)', 'a`b', 'a\nb', "a'b", 'a|b', 'ä'.repeat(8)]) {
      assert.throws(() => validateIfName(n), UsageError, JSON.stringify(n));
    }
  });
});
