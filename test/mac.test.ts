/** MAC helpers: UCMAC/BCMAC derivation (docs/datapath.md section 2) and the strict text form. */
import assert from 'node:assert/strict';
import { bcmac, formatMac, isUcmac, parseMac, ucmac } from '../src/mac';

describe('mac', () => {
  it('UCMAC is "NeuV" + the 16-bit id, BCMAC is ff:ff:ff:00 + the id', () => {
    assert.equal(formatMac(ucmac(0x1234)), '4e:65:75:56:12:34');
    assert.equal(formatMac(ucmac(0)), '4e:65:75:56:00:00');
    assert.equal(formatMac(ucmac(0xffff)), '4e:65:75:56:ff:ff');
    assert.equal(formatMac(bcmac(0xabcd)), 'ff:ff:ff:00:ab:cd');
    assert.ok(isUcmac(ucmac(7)));
    assert.ok(!isUcmac(bcmac(7)));
  });
  it('rejects ids outside 0..65535', () => {
    for (const id of [-1, 65536, 1.5, NaN]) {
      assert.throws(() => ucmac(id), /port id/);
      assert.throws(() => bcmac(id), /port id/);
    }
  });
  it('parseMac accepts six hex octets in either case and round-trips', () => {
    assert.deepEqual([...parseMac('02:42:AC:11:00:02')], [2, 0x42, 0xac, 0x11, 0, 2]);
    assert.equal(formatMac(parseMac('02:42:AC:11:00:02')), '02:42:ac:11:00:02');
  });
  for (const bad of ['', '02:42:ac:11:00', '02:42:ac:11:00:02:03', '2:42:ac:11:00:02', '02-42-ac-11-00-02',
    '0242.ac11.0002', '02:42:ac:11:00:0g', ' 02:42:ac:11:00:02', '02:42:ac:11:00:02\n', '024:2a:c1:10:00:2']) {
    it(`parseMac rejects ${JSON.stringify(bad)} with a clear message`, () => {
      assert.throws(() => parseMac(bad), /malformed MAC .*six hex octets separated by ':'/);
    });
  }
  it('formatMac insists on 6 bytes', () => {
    assert.throws(() => formatMac(new Uint8Array(5)), /6 bytes/);
  });
});
