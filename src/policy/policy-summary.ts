// What the service reads from a policy's data other than through evaluation, computed where the data
// is parsed anyway (in the loader thread): the serving thread never parses data.json (an 18 MiB one
// is 60 MiB of heap under the 128 MiB bound and seconds of the event loop).

/** Plain data: travels with a policy's memory image. */
export interface PolicySummary {
  /** the home trust domain's tenants (`data.egress.tenants` keys): the namespaces metrics label by name */
  tenants: readonly string[];
}

export function summarisePolicyData(data: Readonly<Record<string, unknown>> | undefined): PolicySummary {
  const egress = data?.['egress'];
  const tenants =
    typeof egress === 'object' && egress !== null ? (egress as Record<string, unknown>)['tenants'] : undefined;
  return { tenants: typeof tenants === 'object' && tenants !== null ? Object.keys(tenants) : [] };
}
