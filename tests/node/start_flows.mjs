// Starts one run per input with @pgflow/core's PgflowSqlClient.startFlow, as a TypeScript app
// would, and prints the run ids as JSON.
//   node start_flows.mjs <database-url> <flow-slug> <json-array-of-inputs>
import postgres from 'postgres';
import { PgflowSqlClient } from '@pgflow/core';

const [url, flowSlug, inputsJson] = process.argv.slice(2);
const sql = postgres(url, { max: 1, onnotice: () => {} });
const client = new PgflowSqlClient(sql);
const runIds = [];
for (const input of JSON.parse(inputsJson)) {
  runIds.push((await client.startFlow(flowSlug, input)).run_id);
}
process.stdout.write(JSON.stringify(runIds) + '\n');
await sql.end();
