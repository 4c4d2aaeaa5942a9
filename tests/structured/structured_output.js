// Structured outputs through the `openai` client: for 30 JSON schemas of varied shape, every
// json_schema output parses and validates with ajv, at temperature 0 and at 1.0 with 5 seeds;
// json_object outputs parse. Prints one JSON summary line for tests/api/structured_output_test.cc.
// ENDPOINT is chat (default) or completions (a model without a chat template; response_format
// is a shardserve extension there).
//   node structured_output.js BASE_URL API_KEY [MAX_TOKENS] [ENDPOINT]
'use strict';

const OpenAI = require('openai');
const Ajv = require('ajv');
const addFormats = require('ajv-formats');

const [baseURL, apiKey, maxTokensArg, endpoint = 'chat'] = process.argv.slice(2);
const maxTokens = Number(maxTokensArg || 160);
const client = new OpenAI({baseURL, apiKey, maxRetries: 0});
let model = '';

// 30 schemas of varied shape, shared with bench/grammar_bench.cc.
const SCHEMAS = require('./schemas.json');

async function ask(responseFormat, temperature, seed) {
  const common = {model, response_format: responseFormat, max_tokens: maxTokens, temperature, seed};
  if (endpoint === 'completions') {
    const r = await client.completions.create({...common, prompt: 'The answer in JSON:'});
    return {text: r.choices[0].text, finish: r.choices[0].finish_reason};
  }
  const r = await client.chat.completions.create({
    ...common,
    messages: [{role: 'user', content: 'Answer in JSON.'}],
  });
  return {text: r.choices[0].message.content, finish: r.choices[0].finish_reason};
}

// Runs `jobs` (functions returning promises) `width` at a time.
async function pool(jobs, width) {
  const results = new Array(jobs.length);
  let next = 0;
  async function worker() {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]();
    }
  }
  await Promise.all(Array.from({length: width}, worker));
  return results;
}

async function main() {
  const models = await client.models.list();
  model = models.data[0].id;
  const ajv = new Ajv({strict: false, allErrors: true});
  addFormats(ajv);
  const settings = [{temperature: 0, seed: 1}];
  for (const seed of [1, 2, 3, 4, 5]) settings.push({temperature: 1.0, seed});

  const jobs = [];
  for (const [name, schema] of Object.entries(SCHEMAS)) {
    const validate = ajv.compile(schema);
    for (const s of settings) {
      jobs.push(async () => {
        const format = {type: 'json_schema', json_schema: {name, schema, strict: true}};
        const {text, finish} = await ask(format, s.temperature, s.seed);
        let value;
        try {
          value = JSON.parse(text);
        } catch (e) {
          return {name, ...s, ok: false, why: `does not parse: ${e.message}`, text, finish};
        }
        if (!validate(value)) {
          return {name, ...s, ok: false, why: ajv.errorsText(validate.errors), text, finish};
        }
        return {name, ...s, ok: true, text, finish};
      });
    }
  }
  for (const s of settings) {
    jobs.push(async () => {
      const {text, finish} = await ask({type: 'json_object'}, s.temperature, s.seed);
      try {
        const v = JSON.parse(text);
        const isObject = v !== null && typeof v === 'object' && !Array.isArray(v);
        return {name: 'json_object', ...s, ok: isObject, why: isObject ? '' : 'not an object',
                text, finish};
      } catch (e) {
        return {name: 'json_object', ...s, ok: false, why: e.message, text, finish};
      }
    });
  }
  const results = await pool(jobs, 8);
  const failures = results.filter((r) => !r.ok);
  console.log(JSON.stringify({
    model,
    schemas: Object.keys(SCHEMAS).length,
    runs: results.length,
    passed: results.length - failures.length,
    finishes: results.reduce((m, r) => ({...m, [r.finish]: (m[r.finish] || 0) + 1}), {}),
    sample: results.filter((r) => r.temperature === 1.0).slice(0, 3).map((r) => r.text),
    failures: failures.slice(0, 10),
  }));
}

main().catch((e) => {
  console.error(`structured_output: ${e.status ?? ''} ${e.message}`);
  process.exit(1);
});
