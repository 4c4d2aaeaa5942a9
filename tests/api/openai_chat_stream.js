// Streams one chat completion with the official `openai` npm client and prints one JSON line:
// {text, finish_reason, usage, chunks, first_role}. Usage: node openai_chat_stream.js BASE_URL
// API_KEY SEED
const OpenAI = require('openai').default ?? require('openai');

async function main() {
  const [baseURL, apiKey, seed] = process.argv.slice(2);
  const client = new OpenAI({baseURL, apiKey, timeout: 60000, maxRetries: 0});
  const stream = await client.chat.completions.create({
    model: 'stories260K',
    messages: [
      {role: 'system', content: 'You tell short stories.'},
      {role: 'user', content: 'Tell me a story about a cat.'},
    ],
    stream: true,
    stream_options: {include_usage: true},
    temperature: 0.8,
    seed: Number(seed),
    max_tokens: 48,
  });
  let text = '';
  let finishReason = null;
  let usage = null;
  let chunks = 0;
  let firstRole = null;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.choices.length > 0) {
      const choice = chunk.choices[0];
      if (firstRole === null) firstRole = choice.delta.role ?? '';
      text += choice.delta.content ?? '';
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  // The same request refused for n=2 shows how the client surfaces a 400.
  let nStatus = 0;
  try {
    await client.chat.completions.create(
        {model: 'stories260K', messages: [{role: 'user', content: 'hi'}], n: 2});
  } catch (e) {
    nStatus = e.status;
  }
  console.log(JSON.stringify(
      {text, finish_reason: finishReason, usage, chunks, first_role: firstRole, n_status: nStatus}));
}

main().catch((e) => {
  console.error(`openai_chat_stream: ${e.status ?? ''} ${e.message}`);
  process.exit(1);
});
