// Table-driven policy cases: JSON files next to a policy that say, for an identity (a SPIFFE ID, a
// certificate made at run time, or a whole input document), what the decision must be. The runner
// only compares; the `decide` callback runs the real pipeline (identity → input → policy → decision).
//
// Case file (policies/cases/*.json):
//   { "description"?: string,
//     "data"?: object,          // deep-merged over the policy's data for this file's cases only
//     "cases": [ { "name": string,
//                  exactly one of "spiffe_id": string | "certificate": CertificateSpec | "input": object,
//                  "destination"?: "host" | "host:port" | "[v6]:port",
//                  "expect": { "allow": boolean, "snat_pool"?: string, "reason_contains"?: string } } ] }
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { CertificateSpec } from './case-certificates.js';
import { isDirectory } from '../common/files.js';
import { Authorizer } from '../decision/authorizer.js';
import { isObject } from '../common/json.js';
import type { LoadedPolicy } from '../policy/policy.js';
import { errorMessage } from '../common/errors.js';

export interface CaseExpectation {
  allow: boolean;
  snat_pool?: string;
  reason_contains?: string;
}

export interface PolicyCase {
  name: string;
  spiffe_id?: string;
  certificate?: CertificateSpec;
  input?: Record<string, unknown>;
  destination?: string;
  expect: CaseExpectation;
}

export interface CaseFile {
  path: string;
  description?: string;
  data?: Record<string, unknown>;
  cases: PolicyCase[];
}

/** What `decide` gets: exactly one of spiffeId, certificatePem (leaf PEM, made at run time) or input. */
export interface CaseRequest {
  file: string;
  name: string;
  spiffeId?: string;
  certificatePem?: string;
  input?: Record<string, unknown>;
  /** as written in the case ("host", "host:port"); for input cases it should override input.destination */
  destination?: string;
}

export interface CaseDecision {
  allow: boolean;
  snat_pool: string;
  reason: string;
}

/** Runs one case through the real pipeline against `policy` (the file's data overlay already applied). */
export type CaseDecide = (request: CaseRequest, policy: LoadedPolicy) => Promise<CaseDecision>;

/** A case through the same pipeline as a Check (checkCli): `egress-authz test` and reload checks. */
export const decideCase: CaseDecide = (request, policy) => {
  const d = new Authorizer({ policies: { current: policy }, sink: () => {} }).checkCli(request);
  return Promise.resolve({ allow: d.allow, snat_pool: d.snat_pool, reason: d.reason });
};

export interface CaseOutcome {
  file: string;
  name: string;
  pass: boolean;
  expect: CaseExpectation;
  actual?: CaseDecision;
  /** set when decide threw */
  error?: string;
}

export interface CaseReport {
  ok: boolean;
  passed: number;
  failed: number;
  files: string[];
  outcomes: CaseOutcome[];
  /** one header line per file, `  ✓ name` / `  ✗ name — expected …, got …`, then `N passed, N failed` */
  text: string;
}

/**
 * Case files at casesPath: the file itself, or the *.json files of a folder (of its `cases/` subfolder
 * when it has one, so a policy folder can be given), sorted by name.
 */
export async function listCaseFiles(casesPath: string): Promise<string[]> {
  const info = await stat(casesPath);
  if (!info.isDirectory()) return [casesPath];
  const nested = join(casesPath, 'cases');
  const dir = (await isDirectory(nested)) ? nested : casesPath;
  const names = (await readdir(dir)).filter((n) => n.endsWith('.json')).sort();
  return names.map((n) => join(dir, n));
}

/** Reads and checks a case file; rejects naming the file and the case that is malformed. */
export async function readCaseFile(path: string): Promise<CaseFile> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    throw new Error(`case file ${path}: ${errorMessage(e)}`);
  }
  const problem = (msg: string): Error => new Error(`case file ${path}: ${msg}`);
  if (!isObject(parsed)) throw problem('must be a JSON object with a "cases" list');
  const { description, data, cases } = parsed;
  if (description !== undefined && typeof description !== 'string') throw problem('"description" must be a string');
  if (data !== undefined && !isObject(data)) throw problem('"data" must be an object');
  if (!Array.isArray(cases)) throw problem('"cases" must be a list');
  const names = new Set<string>();
  const checked = cases.map((c: unknown, i) => {
    const where = (msg: string): Error =>
      problem(`case ${i + 1}${isObject(c) && typeof c['name'] === 'string' ? ` (${c['name']})` : ''}: ${msg}`);
    if (!isObject(c)) throw where('must be an object');
    if (typeof c['name'] !== 'string' || c['name'] === '') throw where('"name" must be a non-empty string');
    if (names.has(c['name'])) throw where('duplicate name');
    names.add(c['name']);
    const sources = ['spiffe_id', 'certificate', 'input'].filter((k) => c[k] !== undefined);
    if (sources.length !== 1) throw where('needs exactly one of "spiffe_id", "certificate", "input"');
    if (c['spiffe_id'] !== undefined && typeof c['spiffe_id'] !== 'string') throw where('"spiffe_id" must be a string');
    if (c['input'] !== undefined && !isObject(c['input'])) throw where('"input" must be an object');
    if (c['destination'] !== undefined && typeof c['destination'] !== 'string')
      throw where('"destination" must be a string (host or host:port)');
    const expect = c['expect'];
    if (!isObject(expect) || typeof expect['allow'] !== 'boolean') throw where('"expect.allow" must be a boolean');
    if (expect['snat_pool'] !== undefined && typeof expect['snat_pool'] !== 'string')
      throw where('"expect.snat_pool" must be a string');
    if (expect['reason_contains'] !== undefined && typeof expect['reason_contains'] !== 'string')
      throw where('"expect.reason_contains" must be a string');
    return c as unknown as PolicyCase;
  });
  if (checked.some((c) => c.certificate !== undefined)) {
    const { certificateSpecProblem } = await import('./case-certificates.js');
    checked.forEach((c, i) => {
      const bad = c.certificate === undefined ? undefined : certificateSpecProblem(c.certificate);
      if (bad) throw problem(`case ${i + 1} (${c.name}): ${bad}`);
    });
  }
  const file: CaseFile = { path, cases: checked };
  if (description !== undefined) file.description = description;
  if (data !== undefined) file.data = data;
  return file;
}

/**
 * Runs every case at casesPath (see listCaseFiles) through `decide` and reports like a test runner.
 * Rejects only when a case file is unreadable or malformed; a throwing decide is a failed case.
 */
export async function runPolicyCases(casesPath: string, policy: LoadedPolicy, decide: CaseDecide): Promise<CaseReport> {
  const files = await listCaseFiles(casesPath);
  const caseFiles = await Promise.all(files.map(readCaseFile));
  const needsCerts = caseFiles.some((f) => f.cases.some((c) => c.certificate !== undefined));
  const certificates = needsCerts ? new (await import('./case-certificates.js')).CaseCertificateFactory() : undefined;

  const outcomes: CaseOutcome[] = [];
  const lines: string[] = [];
  for (const file of caseFiles) {
    lines.push(file.path);
    let filePolicy = policy;
    if (file.data) {
      if (!policy.withDataOverlay)
        throw new Error(`case file ${file.path}: has "data", but this policy cannot take a data overlay`);
      filePolicy = await policy.withDataOverlay(file.data);
    }
    for (const c of file.cases) {
      const outcome = await runCase(file.path, c, filePolicy, decide, certificates);
      outcomes.push(outcome);
      lines.push(`  ${describeOutcome(outcome)}`);
    }
  }
  const passed = outcomes.filter((o) => o.pass).length;
  const failed = outcomes.length - passed;
  lines.push(`${passed} passed, ${failed} failed`);
  return { ok: failed === 0, passed, failed, files, outcomes, text: lines.join('\n') };
}

async function runCase(
  file: string,
  c: PolicyCase,
  policy: LoadedPolicy,
  decide: CaseDecide,
  certificates: { pem(spec: CertificateSpec): Promise<string> } | undefined,
): Promise<CaseOutcome> {
  const base = { file, name: c.name, expect: c.expect };
  try {
    const request: CaseRequest = { file, name: c.name };
    if (c.spiffe_id !== undefined) request.spiffeId = c.spiffe_id;
    if (c.input !== undefined) request.input = c.input;
    if (c.certificate !== undefined && certificates) request.certificatePem = await certificates.pem(c.certificate);
    if (c.destination !== undefined) request.destination = c.destination;
    const actual = await decide(request, policy);
    return { ...base, pass: matches(c.expect, actual), actual };
  } catch (e) {
    return { ...base, pass: false, error: e instanceof Error ? e.message : String(e) };
  }
}

function matches(expect: CaseExpectation, actual: CaseDecision): boolean {
  if (actual.allow !== expect.allow) return false;
  if (expect.snat_pool !== undefined && actual.snat_pool !== expect.snat_pool) return false;
  if (expect.reason_contains !== undefined && !actual.reason.includes(expect.reason_contains)) return false;
  return true;
}

function describeOutcome(o: CaseOutcome): string {
  if (o.pass) return `✓ ${o.name}`;
  const e = o.expect;
  let expected = `allow=${e.allow}`;
  if (e.snat_pool !== undefined) expected += ` pool=${e.snat_pool}`;
  if (e.reason_contains !== undefined) expected += ` reason containing ${JSON.stringify(e.reason_contains)}`;
  if (o.error !== undefined || !o.actual)
    return `✗ ${o.name} — expected ${expected}, got error: ${o.error ?? 'no decision'}`;
  const a = o.actual;
  return `✗ ${o.name} — expected ${expected}, got allow=${a.allow} pool=${a.snat_pool} reason=${a.reason}`;
}
