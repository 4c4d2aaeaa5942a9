// What the official `openai` npm client sees of the router's OpenAI fidelity; prints one JSON
// line for the test to check. Usage: node openai_fidelity.js BASE_URL API_KEY
//   completion: text, logprobs (tokens, text_offset, top_logprobs) of a greedy completion
//   chat_ids: the ids of two chat answers; developer: a chat whose first message is `developer`
//   unseeded: two temperature-1 chats without a seed (text, seed), and the first replayed with
//   its returned seed; errors: status and param of refused requests; models: /v1/models
const OpenAI = require('openai').default ?? require('openai');

async function refused(promise) {
  try {
    await promise;
    return {status: 200, param: null};
  } catch (e) {
    return {status: e.status ?? 0, param: e.param ?? e.error?.param ?? null};
  }
}

async function main() {
  const [baseURL, apiKey] = process.argv.slice(2);
  const client = new OpenAI({baseURL, apiKey, timeout: 60000, maxRetries: 0});
  const model = 'stories260K';
  const out = {};

  const c = await client.completions.create(
      {model, prompt: 'Once upon a time', max_tokens: 12, temperature: 0, logprobs: 3});
  out.completion = {text: c.choices[0].text, logprobs: c.choices[0].logprobs};

  const ask = (extra) => client.chat.completions.create(
      {model, messages: [{role: 'user', content: 'Tell me a story.'}], max_tokens: 24, ...extra});
  const a = await ask({temperature: 0});
  const b = await ask({temperature: 0});
  out.chat_ids = [a.id, b.id];

  const d = await client.chat.completions.create({
    model,
    messages: [{role: 'developer', content: 'You tell short stories.'},
               {role: 'user', content: 'A story about a dog.'}],
    max_tokens: 8,
    temperature: 0,
  });
  out.developer = {finish_reason: d.choices[0].finish_reason, text: d.choices[0].message.content};

  const u1 = await ask({temperature: 1});
  const u2 = await ask({temperature: 1});
  const replay = await ask({temperature: 1, seed: u1.seed});
  out.unseeded = {
    first: {text: u1.choices[0].message.content, seed: u1.seed},
    second: {text: u2.choices[0].message.content, seed: u2.seed},
    replay: {text: replay.choices[0].message.content, seed: replay.seed},
  };

  out.errors = {
    logprobs_30: await refused(
        client.completions.create({model, prompt: 'Hi', max_tokens: 2, logprobs: 30})),
    logit_bias: await refused(ask({logit_bias: {'5': 10}})),
    // A tool whose schema the grammar cannot enforce, when the call is required.
    tools: await refused(ask({
      tools: [{
        type: 'function',
        function: {
          name: 'f',
          parameters: {type: 'object', properties: {n: {type: 'integer', minimum: 1}}},
        },
      }],
      tool_choice: 'required',
    })),
    // A schema keyword the engine does not support is refused, never ignored.
    response_format: await refused(ask({
      response_format: {
        type: 'json_schema',
        json_schema: {name: 'n', schema: {type: 'string', pattern: '^a+$'}},
      },
    })),
  };

  const models = await client.models.list();
  out.models = models.data.map((m) => ({id: m.id, created: m.created}));
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(`openai_fidelity: ${e.status ?? ''} ${e.message}`);
  process.exit(1);
});
