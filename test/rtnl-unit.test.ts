/**
 * The rtnetlink socket's guard against a request the kernel never answers:
 * a receive timeout, so a bug of ours becomes one error line instead of a
 * command, or the service, blocked for ever. Needs no privilege (an
 * NLMSG_NOOP on a NETLINK_ROUTE socket).
 */
import assert from 'node:assert/strict';
import { Rtnl } from '../src/bpf/rtnl';

const NLMSG_NOOP = 1;

describe('rtnetlink socket (unit)', function () {
  it('a request the kernel does not answer fails after the receive timeout, one line, instead of blocking', function () {
    const r = Rtnl.open('a test', 200);
    try {
      // Without NLM_F_ACK the kernel answers a no-op with nothing at all.
      assert.throws(
        () => r.request(NLMSG_NOOP, 0, Buffer.alloc(0), 'a no-op', () => undefined),
        (e: Error) => /^receive a no-op: no answer from the kernel in 200 ms: .*\(ETIMEDOUT\)$/.test(e.message) && !e.message.includes('\n'),
      );
    } finally {
      r.close();
    }
  });
});
