/**
 * BENCHMARKS.md's section 10 (the first packet with the OCI hook against
 * event-driven interception) is docs/containers.md's table, copied by
 * bench/report.ts: it must be the table docs/containers.md has now.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT } from './helpers';
import { firstPacketMarkdown, spliceFirstPacket } from '../bench/report';

describe('BENCHMARKS.md: the first-packet section (unit)', function () {
  it("holds docs/containers.md's first-packet table as it is now", function () {
    const md = fs.readFileSync(path.join(ROOT, 'BENCHMARKS.md'), 'utf8');
    assert.equal(md, spliceFirstPacket(md), 'BENCHMARKS.md section 10 is stale: node dist/bench/report.js --first-packet');
    const table = firstPacketMarkdown().filter((l) => l.startsWith('|'));
    assert.ok(table.length >= 4 && table.some((l) => /the hook, `fwd`/.test(l)) && table.some((l) => /podman events/.test(l)), 'the hook and the events rows');
  });

  it('puts the section before Raw data, or replaces it, and refuses a doc without the table', function () {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-bench-report-'));
    try {
      const doc = path.join(dir, 'containers.md');
      const write = (cell: string) =>
        fs.writeFileSync(doc, `# x\n\n### First packet: the hook against the runtime's start event\n\ntext\n\n| a | b |\n| --- | --- |\n| ${cell} | 1 |\n\nafter\n`);
      write('one');
      const base = '# Benchmarks\n\n## 9. Nine\n\nnine\n\n## Raw data\n\nraw\n';
      const once = spliceFirstPacket(base, doc);
      assert.match(once, /## 9\. Nine\n\nnine\n\n## 10\. First packet[^]*\| one \| 1 \|\n\n## Raw data\n\nraw\n$/);
      write('two');
      const twice = spliceFirstPacket(once, doc);
      assert.equal(twice, once.replace('| one |', '| two |'));
      fs.writeFileSync(doc, '# nothing here\n');
      assert.throws(() => spliceFirstPacket(base, doc), /no table under/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
