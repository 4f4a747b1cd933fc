// A minimal TypeScript-pgflow-style worker, as the interoperability tests need one: it speaks the
// upstream protocol through @pgflow/core's PgflowSqlClient (readMessages -> startTasks ->
// completeTask/failTask) and exits once the flow has no started runs left.
//   node worker.mjs <database-url> <flow-slug> [options-json]
// options: maxSeconds (60), maxTasks (no limit), fail (step slugs whose handler throws),
// slow ({step slug: milliseconds} a handler takes), visibility (seconds a read message is
// reserved, 5), readSize (messages read at once, 10).
import postgres from 'postgres';
import { PgflowSqlClient } from '@pgflow/core';
import { randomUUID } from 'node:crypto';

// Handlers get upstream 0.8.1's raw task input: {run: flowInput, dep: output} or a map element.
const handlers = {
  interop: {
    seed: (input) => [input.run.n, input.run.n + 1],
    square: (x) => x * x,
    total: (input) => ({ sum: input.square.reduce((a, b) => a + b, 0), count: input.seed.length }),
  },
  relay: {
    flaky: (input) => ({ by: 'node', n: input.run.n }),
  },
  // Conditions (pgflow-python's extension/0061): big/small run or are skipped by SQL; optional
  // always fails and is skipped on exhaustion; report echoes what 0.8.1's start_tasks gave it.
  branching: {
    classify: (input) => ({ kind: input.run.size > 10 ? 'big' : 'small' }),
    big: () => 'node big',
    small: () => 'node small',
    optional: () => 'never reached: the test makes it fail',
    report: (input) => input,
  },
  // Concurrency limits (pgflow-python's extension/0080): a job limited to 2 per tenant.
  tenant_sync: {
    perform: (input) => ({ by: 'node', tenant: input.run.tenant }),
  },
  // Priorities (pgflow-python's extension/0081): read in priority order like any message.
  ranked_node: {
    perform: (input) => ({ by: 'node', n: input.run.n }),
  },
  // Rate limits (pgflow-python's extension/0082): messages over budget stay invisible.
  paced_node: {
    perform: (input) => ({ by: 'node', n: input.run.n }),
  },
  // Wait steps (pgflow-python's extension/0070): approve has no message, so it never comes
  // here; a signal completes it and publish gets its output.
  ts_approval: {
    draft: (input) => ({ by: 'node', amount: input.run.amount }),
    publish: (input) => ({ amount: input.draft.amount, approved_by: input.approve.by }),
  },
  // Subflows (pgflow-python's extension/0073): payment starts a ts_charge run per cart and has
  // no message, so it never comes here; the child's output reaches receipt.
  ts_checkout: {
    cart: (input) => ({ by: 'node', total: input.run.prices.reduce((a, b) => a + b, 0) }),
    receipt: (input) => ({ paid: input.payment.charge.charged }),
  },
  ts_charge: {
    charge: (input) => ({ by: 'node', charged: input.run.amount }),
  },
  gate: {
    enrich: (input) => ({ by: 'node', id: input.run.id }),
    check: () => ({ by: 'node' }),
    publish: () => 'published by node',
  },
};

const [url, flowSlug, optionsJson = '{}'] = process.argv.slice(2);
const {
  maxSeconds = 60, maxTasks = Infinity, fail = [], slow = {}, visibility = 5, readSize = 10,
} = JSON.parse(optionsJson);
const sql = postgres(url, { max: 2, onnotice: () => {} });
const client = new PgflowSqlClient(sql);
const workerId = randomUUID();
await sql`INSERT INTO pgflow.workers (worker_id, queue_name, function_name)
          VALUES (${workerId}, ${flowSlug}, 'node-test-worker')`;

const deadline = Date.now() + maxSeconds * 1000;
const attempts = [];
let completed = 0;
let batch = 0;
while (Date.now() < deadline && attempts.length < maxTasks) {
  const messages = await client.readMessages(flowSlug, visibility, Math.min(readSize, maxTasks - attempts.length), 1, 50);
  const tasks = messages.length
    ? await client.startTasks(flowSlug, messages.map((m) => m.msg_id), workerId)
    : [];
  batch += 1;
  for (const task of tasks) {
    attempts.push({ step: task.step_slug, at: Date.now() / 1000, batch, input: task.input });
    try {
      if (slow[task.step_slug]) await new Promise((done) => setTimeout(done, slow[task.step_slug]));
      if (fail.includes(task.step_slug)) throw new Error(`node failed ${task.step_slug}`);
      await client.completeTask(task, handlers[flowSlug][task.step_slug](task.input));
      completed += 1;
    } catch (error) {
      await client.failTask(task, error);
    }
  }
  if (!tasks.length && maxTasks === Infinity) {
    const [{ open }] = await sql`SELECT count(*)::int AS open FROM pgflow.runs
                                 WHERE flow_slug = ${flowSlug} AND status = 'started'`;
    if (open === 0) break;
  }
}
process.stdout.write(JSON.stringify({ workerId, completed, attempts }) + '\n');
await sql.end();
