// Tool calls through the `openai` client, streamed and not: with tool_choice `required` and with
// a named function the model calls a tool whose arguments validate (ajv) against its parameters;
// the tool's result goes back as a `tool` message (with the assistant's tool_calls before it) and
// the model answers in text. Prints one JSON summary line for
// tests/api/structured_output_test.cc.
//   node tool_calls.js BASE_URL API_KEY
'use strict';

const OpenAI = require('openai');
const Ajv = require('ajv');

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({baseURL, apiKey, maxRetries: 0});

const tools = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'The current weather in a city',
      parameters: {
        type: 'object',
        properties: {
          city: {type: 'string', maxLength: 20},
          unit: {enum: ['celsius', 'fahrenheit']},
        },
        required: ['city', 'unit'],
        additionalProperties: false,
      },
    },
  },
  {
    type: 'function',
    function: {
      name: 'get_time',
      description: 'The local time in a time zone',
      parameters: {
        type: 'object',
        properties: {zone: {type: 'string', maxLength: 16}, seconds: {type: 'boolean'}},
        required: ['zone'],
      },
    },
  },
];

const ajv = new Ajv({strict: false, allErrors: true});
const validators = Object.fromEntries(
    tools.map((t) => [t.function.name, ajv.compile(t.function.parameters)]));

function checkCall(call, want) {
  const v = validators[call.function.name];
  if (!v) return `unknown tool ${call.function.name}`;
  if (want && call.function.name !== want) return `called ${call.function.name}, not ${want}`;
  if (!/^call_[A-Za-z0-9]{24}$/.test(call.id)) return `bad id ${call.id}`;
  if (call.type !== 'function') return `type ${call.type}`;
  let args;
  try {
    args = JSON.parse(call.function.arguments);
  } catch (e) {
    return `arguments do not parse: ${call.function.arguments}`;
  }
  if (!v(args)) return `arguments ${call.function.arguments}: ${ajv.errorsText(v.errors)}`;
  return '';
}

// A streamed chat completion gathered as the client sees it: content, and tool calls assembled
// from their deltas by index.
async function streamed(params) {
  const stream = await client.chat.completions.create({...params, stream: true});
  let content = '';
  let finish = null;
  const calls = [];
  for await (const chunk of stream) {
    const choice = chunk.choices[0];
    if (!choice) continue;
    if (choice.delta.content) content += choice.delta.content;
    for (const d of choice.delta.tool_calls || []) {
      calls[d.index] = calls[d.index] || {id: '', type: 'function', function: {name: '', arguments: ''}};
      const c = calls[d.index];
      if (d.id) c.id = d.id;
      if (d.type) c.type = d.type;
      if (d.function?.name) c.function.name += d.function.name;
      if (d.function?.arguments) c.function.arguments += d.function.arguments;
    }
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  return {content, finish, tool_calls: calls};
}

async function plain(params) {
  const r = await client.chat.completions.create(params);
  const m = r.choices[0].message;
  return {content: m.content, finish: r.choices[0].finish_reason, tool_calls: m.tool_calls || []};
}

// Call, tool result, answer.
async function roundTrip(label, ask, toolChoice, want, seed) {
  const model = (await client.models.list()).data[0].id;
  const messages = [
    {role: 'system', content: 'You can call tools.'},
    {role: 'user', content: 'What is the weather in Paris, and what time is it there?'},
  ];
  // DeepSeek-V3's call markers take 164 bytes at least, and the budget counts a byte per token
  // (docs/API.md): room for them.
  const first = await ask({model, messages, tools, tool_choice: toolChoice, max_tokens: 256,
                           temperature: 1, seed});
  const problems = [];
  if (first.finish !== 'tool_calls') problems.push(`first finish_reason ${first.finish}`);
  if (first.tool_calls.length < 1) problems.push('no tool call');
  if (want && first.tool_calls.length !== 1) problems.push(`${first.tool_calls.length} calls`);
  for (const c of first.tool_calls) {
    const why = checkCall(c, want);
    if (why) problems.push(why);
  }
  const followUp = [
    ...messages,
    {role: 'assistant', content: first.content || null, tool_calls: first.tool_calls},
    ...first.tool_calls.map((c) => ({
      role: 'tool', tool_call_id: c.id, content: JSON.stringify({ok: true, for: c.function.name}),
    })),
  ];
  const second = await ask({model, messages: followUp, tools, max_tokens: 24, temperature: 0});
  if (typeof second.content !== 'string') problems.push('no answer text');
  if (!['stop', 'length', 'tool_calls'].includes(second.finish)) {
    problems.push(`answer finish_reason ${second.finish}`);
  }
  return {label, ok: problems.length === 0, problems, calls: first.tool_calls,
          answer: second.content, answer_finish: second.finish};
}

async function main() {
  const results = [];
  for (const seed of [1, 2, 3]) {
    results.push(await roundTrip('required', plain, 'required', '', seed));
    results.push(await roundTrip('required, streamed', streamed, 'required', '', seed));
    results.push(await roundTrip('named', plain, {type: 'function', function: {name: 'get_time'}},
                                 'get_time', seed));
    results.push(await roundTrip('named, streamed', streamed,
                                 {type: 'function', function: {name: 'get_weather'}},
                                 'get_weather', seed));
  }
  // tool_choice none: text only, never calls.
  const model = (await client.models.list()).data[0].id;
  const none = await plain({model, messages: [{role: 'user', content: 'Hi'}], tools,
                            tool_choice: 'none', max_tokens: 16});
  results.push({label: 'none', ok: none.tool_calls.length === 0 && typeof none.content === 'string',
                problems: [], calls: none.tool_calls});
  console.log(JSON.stringify({
    runs: results.length,
    passed: results.filter((r) => r.ok).length,
    sample: results.slice(0, 2).map((r) => r.calls),
    failures: results.filter((r) => !r.ok),
  }));
}

main().catch((e) => {
  console.error(`tool_calls: ${e.status ?? ''} ${e.message}`);
  process.exit(1);
});
