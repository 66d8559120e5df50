/**
 * `neuv-bpf serve`: the datapath's owner as a long-running process with an
 * HTTP/1.1 + JSON API on a unix socket (docs/api.md).
 *
 *   http.ts     bounded JSON bodies, JSON errors with the CLI's exit-code classes
 *   api.ts      the calls, thin shells over Datapath, intercept/release, Flows
 *   metrics.ts  Prometheus metrics (prom-client), read on scrape
 *   server.ts   Service: load or adopt, one service per pin root, socket, stop
 *   endpoints.ts  the DP told of each intercepted container before it runs (--dp-register)
 *   client.ts   ServiceClient: the typed client; runningService: the service of a pin
 *               root, if one runs (the CLI and the hook load only this file)
 */
export { Service, parseListenAddress, STOP_GRACE_MS } from './server';
export type { ServiceOptions, ServiceInfo, ListenAddress } from './server';
export { ServiceClient, ServiceError, defaultSocketPath, pairSegment, runningService, serviceLockPath } from './client';
export type { Json, Health, DpStatus, RuntimeStatus, OffloadStatus, ServiceTarget, InterceptRequest, ServiceClientOptions, TraceQuery, TraceEndLine } from './client';
export { ROUTES } from './api';
export { DpRegistrar, readEndpointPolicy } from './endpoints';
export type { EndpointPolicy } from './endpoints';
export { MAX_BODY_BYTES, HTTP_STATUS } from './http';
