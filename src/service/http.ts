/**
 * The service's HTTP plumbing: bounded JSON request bodies, JSON responses
 * (counters as numbers), and errors as `{"error": "...", "code": N}` with the
 * CLI's exit-code class N and the HTTP status of that class.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ExitCode, ExitCodeValue, NeuvError, UsageError, exitCodeOf, oneLine } from '../errors';
import { bigintAsNumber } from '../format';

/** Largest request body accepted (1,000 pair specs take about 100 KiB). */
export const MAX_BODY_BYTES = 1 << 20;
/** A body over MAX_BODY_BYTES is read and dropped up to this size before the 413; larger, the connection is closed. */
const DRAIN_LIMIT = 64 << 20;

/** The HTTP status of each exit-code class (docs/api.md). */
export const HTTP_STATUS: Record<ExitCodeValue, number> = {
  [ExitCode.OK]: 200,
  [ExitCode.FAILURE]: 500,
  [ExitCode.USAGE]: 400,
  [ExitCode.PERMISSION]: 403,
  [ExitCode.NOT_FOUND]: 404,
  [ExitCode.CONFLICT]: 409,
  [ExitCode.KERNEL]: 500,
  [ExitCode.WRONG_NETNS]: 409,
  [ExitCode.UNSAFE]: 500, // a planted path on the node: the operator's to fix, not the client's
};

/** A refusal with its own HTTP status (413, 405, 503), still in an exit-code class. */
export class HttpError extends NeuvError {
  constructor(
    readonly status: number,
    message: string,
    code: ExitCodeValue,
  ) {
    super(message, code);
    this.name = 'HttpError';
  }
}

/** The error body of the API. */
export interface ApiErrorBody {
  error: string;
  code: number;
}

/** The status and body for any thrown value. */
export function errorResponse(e: unknown): { status: number; body: ApiErrorBody } {
  const code = exitCodeOf(e) as ExitCodeValue;
  const status = e instanceof HttpError ? e.status : (HTTP_STATUS[code] ?? 500);
  return { status, body: { error: oneLine(e), code } };
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body, bigintAsNumber) + '\n';
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * The request body parsed as JSON; undefined when empty. Refuses (before
 * anything changes) a body over `limit` bytes (413) and one that is not JSON (400).
 */
export async function readJson(req: IncomingMessage, limit = MAX_BODY_BYTES): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  // A body over the limit is read to its end and dropped (the client then reads the 413 instead of
  // a reset connection), up to DRAIN_LIMIT; past that the connection is closed.
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > DRAIN_LIMIT) req.socket.destroy();
    else if (size <= limit) chunks.push(c as Buffer);
  }
  if (size > limit) throw new HttpError(413, `request body larger than ${limit} bytes`, ExitCode.USAGE);
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UsageError(`request body is not valid JSON (${(e as Error).message})`);
  }
}

/**
 * A JSON object with only `fields` and at least `required` of them; a
 * UsageError naming what is wrong otherwise.
 */
export function objectWith(v: unknown, fields: readonly string[], required: readonly string[], what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new UsageError(`${what}: expected a JSON object with ${fields.join(', ')}`);
  }
  const o = v as Record<string, unknown>;
  const unknown = Object.keys(o).filter((k) => !fields.includes(k));
  if (unknown.length) throw new UsageError(`${what}: unknown field${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => `'${k}'`).join(', ')} (expected ${fields.join(', ')})`);
  const missing = required.filter((k) => o[k] === undefined);
  if (missing.length) throw new UsageError(`${what}: missing field${missing.length > 1 ? 's' : ''} ${missing.map((k) => `'${k}'`).join(', ')}`);
  return o;
}
