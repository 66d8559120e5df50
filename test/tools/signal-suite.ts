/**
 * A mocha suite for test/test-run.test.ts (make test does not run it: not a
 * *.test.js): makes a netns and registers its removal, writes the netns's
 * name to $NEUV_TEST_SIGNAL_READY, then waits until a signal stops it.
 * NEUV_TEST_SIGNAL_IGNORE=1: it ignores SIGHUP, SIGINT and SIGTERM (a suite
 * that does not end when told to).
 */
import * as fs from 'node:fs';
import { onCleanup, sh, uniqueName } from '../helpers';

describe('a suite stopped by a signal', function () {
  it('holds a netns until then', async function () {
    this.timeout(0);
    const ns = uniqueName();
    sh('ip', ['netns', 'add', ns]);
    onCleanup(() => sh('ip', ['netns', 'del', ns]), `netns ${ns}`);
    if (process.env.NEUV_TEST_SIGNAL_IGNORE === '1') {
      for (const sig of ['SIGHUP', 'SIGINT', 'SIGTERM'] as const) process.removeAllListeners(sig).on(sig, () => undefined);
    }
    const ready = process.env.NEUV_TEST_SIGNAL_READY!;
    fs.writeFileSync(`${ready}.tmp`, ns);
    fs.renameSync(`${ready}.tmp`, ready);
    await new Promise(() => setInterval(() => undefined, 1000));
  });
});
