/**
 * Automatic offload of what NeuVector's DP decided (serve --offload RULE):
 *
 *   rule.ts       the rule: parsed, kept across restarts, applied to one DP session
 *   offloader.ts  Offloader: the DP's sessions read, the ones the rule takes written into neuv_flows
 */
export { DEFAULT_RULE, OffloadRule, decideSession, offloadRulePath, parseOffloadRule, readOffloadRule, ruleText, writeOffloadRule } from './rule';
export { Offloaded, OffloadStats, Offloader, OffloaderOptions } from './offloader';
