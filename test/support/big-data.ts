// A realistic large data set made at test time: the default policy's data with `count` more tenants of
// nine destinations each. 40,000 of them are the figure issue 14 measured (17.0 MiB of data.json,
// about 520,000 values).
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { POLICY_DIR } from './service.js';

export function bigTenantData(count: number): Record<string, any> {
  const data = JSON.parse(readFileSync(join(POLICY_DIR, 'data.json'), 'utf8'));
  for (let i = 0; i < count; i++) {
    const ns = bigTenant(i);
    data.egress.tenants[ns] = {
      snat_pool: `pool_${i % 97}`,
      destinations: Array.from({ length: 9 }, (_, j) => `svc-${j}.${ns}.partner-${i % 13}.example:${443 + j}`),
    };
  }
  return data;
}

/** The namespace of generated tenant `i`. */
export function bigTenant(i: number): string {
  return `tenant-${String(i).padStart(5, '0')}`;
}

/** A copy of the default policy folder (without its cases and Rego tests) with `count` more tenants. */
export function bigPolicyFolder(dir: string, count: number): string {
  rmSync(dir, { recursive: true, force: true });
  cpSync(POLICY_DIR, dir, { recursive: true });
  rmSync(join(dir, 'cases'), { recursive: true, force: true });
  rmSync(join(dir, 'egress_authz_test.rego'), { force: true });
  writeFileSync(join(dir, 'data.json'), JSON.stringify(bigTenantData(count)));
  return dir;
}
