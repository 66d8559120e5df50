/**
 * intercept / release: NeuVector's pullContainerPort and its reverse
 * (docs/datapath.md section 1), then `pair add` / `pair del` through the
 * Datapath API.
 *
 * intercept takes a container's port (eth0) out of its network namespace and
 * puts a new veth in its place that looks the same from inside: same name,
 * MAC, MTU, queues, ifindex, addresses, routes and neighbour entries. The
 * original port, renamed vex<tag>-<port>, and the new veth's peer
 * vin<tag>-<port> move to the enforcer netns (the one neuv-bpf runs in),
 * where the datapath joins them.
 *
 * Every step that changes something registers its undo; a failure runs the
 * undos in reverse, so the container keeps its network exactly as it was.
 * A journal record written before each step (src/intercept/journal.ts) lets a killed
 * run be finished or rolled back.
 *
 *   target.ts     which container (pid or netns), the vex/vin names
 *   runner.ts     NsRunner: one netns's links and addresses in-process, iproute2/ethtool for the rest
 *   netlink.ts    rtnetlink for a link and its addresses (RTM_GETLINK/NEWLINK/DELLINK, RTM_*ADDR)
 *   snapshot.ts   PortSnapshot: a port's link, addresses, routes, neighbours; recreating them
 *   steps.ts      step names, one step, checks, the journal and lock glue
 *   intercept.ts  intercept;  release.ts  release
 *
 * Each step is a fault point (intercept:before-<step>, release:before-<step>;
 * src/faults.ts) for the rollback and crash tests.
 */
export type { Target, ResolvedTarget } from './target';
export { inodeTag, resolveTarget, portNames, tempMac } from './target';
export { NsRunner, enforcerRunner } from './runner';
export type { LinkDetail } from './runner';
export type { AddrJson, RouteJson, NeighJson, PortSnapshot } from './snapshot';
export { snapshotPort, routeArgs, neighArgs, addAddresses, restoreRoutesAndNeighbours, restorePort } from './snapshot';
export { INTERCEPT_STEPS, RELEASE_STEPS } from './steps';
export type { InterceptOptions, InterceptResult } from './intercept';
export { intercept } from './intercept';
export type { ReleaseOptions, ReleaseRecordedOptions, ReleaseResult } from './release';
export { release, releaseRecorded } from './release';
