/**
 * Migration from NeuVector's tc pipe (GitHub issue 8): `discover`, `adopt`
 * and `handback` (tcjson.ts, rules.ts, discover.ts, adopt.ts, handback.ts), on a node whose enforcer netns runs NeuVector's u32 rules
 * (docs/datapath.md sections 3, 4 and 7; the rules themselves: src/migrate/nvtc.ts).
 *
 * discover reads the enforcer netns (`ip -d -j link show`, `tc -j qdisc
 * show`, `tc -json filter show dev X ingress` for every port with an ingress
 * qdisc) and classifies what it finds: vin/vex pairs (by NeuVector's names
 * and by the ports their rules mirror to), the workload MAC and UCMAC each
 * rule encodes (decoded byte by byte from the u32 keys and pedit keys, never
 * from a command line), the mode the rules imply, the qdisc kinds, and what
 * it cannot classify. tc's JSON repeats the "match" key once per u32 key, and
 * merges keys into 32-bit words (the u8 unicast check and the u16 DA match at
 * -14 become one key at -16), so it is parsed with repeated keys kept and the
 * keys are decoded per byte offset.
 *
 * adopt takes every discovered pair over without a gap:
 *   1. (load the datapath if it is not loaded: vbr-neuv and its legacy
 *      ingress qdisc are kept, neuv_vbr runs ahead of NeuVector's vbr-neuv
 *      filters: tcx, or tc pref 1 on the ingress block);
 *   2. write every pair's map entries (stats, vex, vin, then ids: neuv_vbr
 *      never sees an id without its ports) before any hook:
 *      from then on neuv_vbr delivers the DP's frames of these UCMACs exactly
 *      as NeuVector's vbr-neuv rules did, while vin/vex still run NeuVector's
 *      rules;
 *   3. per pair: attach neuv_vin/neuv_vex (tc pref 1 on the existing ingress
 *      qdisc, ahead of prefs 10001/10002, or tcx): a frame meets either all of
 *      NeuVector's rules or our program, never both, and our program finds its
 *      entry from the first frame; verify (our program is the one attached
 *      and runs first, a probe frame through the pinned programs with the
 *      port's ifindex as ingress comes out as a redirect to the other port and
 *      is counted for the pair); then delete NeuVector's filters of the pair
 *      (vin/vex prefs 10001/10002, its two vbr-neuv prefs) and check none is
 *      left.
 * It stops at the first pair that fails. A failure before the filters are
 * deleted puts that pair back as it was (its hooks detached, the entries
 * written by this run removed, the same for the pairs after it): it stays on
 * NeuVector's rules. A failure while deleting them leaves the pair on
 * neuv-bpf (verified live) with the remaining NeuVector filters shadowed, and
 * says which.
 *
 * handback is the reverse, for a node being rolled back: it installs
 * NeuVector's rules for every pair (shadowed while our hooks run first), then
 * detaches neuv_vbr (NeuVector's vbr-neuv rules take over), then deletes each
 * pair (hooks first, then entries: NeuVector's vin/vex rules take over), and
 * removes the pins. vbr-neuv/vth-neuv stay (NeuVector's DP is bound to
 * vth-neuv). It refuses before any change where the kernel cannot install
 * what a pair needs: FWD needs act_pedit; a pair in bypass or drop has no
 * NeuVector equivalent; a port with a clsact qdisc cannot take NeuVector's
 * `parent ffff:` rules. TAP without act_pedit (the DP's copies carry the
 * workload MAC instead of the UCMAC, as with NeuVector on such a kernel) or
 * without act_gact (no vbr-neuv drop rules: the DP's frames for the pair then
 * die in the enforcer netns stack instead) is handed back with a warning.
 *
 * Each step of ADOPT_STEPS is a fault point adopt:<step> (fail@adopt:<step>:<vin>
 * for one pair only; src/faults.ts), for the tests.
 */
export { parseJsonValues } from './tcjson';
export { NV_PREF_IP, NV_PREF_ALL, parseFilterList, isOurFilter, RuleError, matchBytes, macMatched, peditWrites, classifyIpRule, classifyAllRule, classifyVbrRule } from './rules';
export type { U32Key, PeditKey, TcAction, TcFilter, ByteMatch, IpRule, VbrRule } from './rules';
export { classifyNode, readFilters, readQdiscs, snapshot, discover, tcActions } from './discover';
export type { QdiscKind, QdiscJson, NodeSnapshot, NvFilterRef, DiscoveredPair, Unclassified, Discovery, TcActions } from './discover';
export { ADOPT_STEPS, selectPlanned, openMaps, seed, unseed, probeFrame, adopt } from './adopt';
export type { AdoptStep, AdoptOptions, AdoptPlanPair, AdoptedPair, AdoptResult, Seeded } from './adopt';
export { handback } from './handback';
export type { HandbackPair, HandbackResult } from './handback';
