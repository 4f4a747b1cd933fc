// Reads a JSON array of flow descriptions (pgflow-python's FlowDefinition.to_dict() shape) on
// stdin, builds each with the TypeScript DSL, and prints compileFlow's statements as JSON.
import { Flow, compileFlow } from '@pgflow/dsl';

const camel = { max_attempts: 'maxAttempts', base_delay: 'baseDelay', timeout: 'timeout', start_delay: 'startDelay' };

function runtimeOptions(source) {
  const options = {};
  for (const [snake, name] of Object.entries(camel)) {
    if (source[snake] !== undefined) options[name] = source[snake];
  }
  return options;
}

function build(description) {
  let flow = new Flow({ slug: description.slug, ...runtimeOptions(description) });
  for (const step of description.steps) {
    const handler = (input) => input;
    if (step.step_type === 'map') {
      const deps = step.depends_on ?? [];
      const opts = { slug: step.slug, ...runtimeOptions(step) };
      if (deps.length === 1) opts.array = deps[0];
      flow = flow.map(opts, handler);
    } else {
      flow = flow.step({ slug: step.slug, dependsOn: step.depends_on ?? [], ...runtimeOptions(step) }, handler);
    }
  }
  return flow;
}

let raw = '';
for await (const chunk of process.stdin) raw += chunk;
const flows = JSON.parse(raw);
process.stdout.write(JSON.stringify(flows.map((d) => compileFlow(build(d)))));
