// Streams a story from a shardserve router over gRPC with @grpc/grpc-js and
// @grpc/proto-loader (the .proto files are loaded at run time; nothing is generated).
//
// Shows a deadline on the call and an API key sent as `authorization: Bearer <key>` metadata.
//
//   npm ci
//   node story.js --server localhost:50051 --prompt "Once upon a time" --deadline-s 10
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function parseArgs(argv) {
  const args = {
    server: 'localhost:50051',
    prompt: 'Once upon a time',
    maxTokens: 64,
    temperature: 0.8,
    seed: 1,
    deadlineS: 30,
    apiKey: '',
    json: false,
    protoDir: path.join(__dirname, '..', '..', 'proto'),
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => argv[++i];
    if (flag === '--server') args.server = value();
    else if (flag === '--prompt') args.prompt = value();
    else if (flag === '--max-tokens') args.maxTokens = Number(value());
    else if (flag === '--temperature') args.temperature = Number(value());
    else if (flag === '--seed') args.seed = Number(value());
    else if (flag === '--deadline-s') args.deadlineS = Number(value());
    else if (flag === '--api-key') args.apiKey = value();
    else if (flag === '--proto-dir') args.protoDir = value();
    else if (flag === '--json') args.json = true;
    else throw new Error(`unknown flag ${flag}`);
  }
  return args;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const definition = protoLoader.loadSync('shardserve/v1/inference.proto', {
    includeDirs: [args.protoDir],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
  });
  const v1 = grpc.loadPackageDefinition(definition).shardserve.v1;
  const client = new v1.InferenceService(args.server, grpc.credentials.createInsecure());

  const metadata = new grpc.Metadata();
  if (args.apiKey) metadata.set('authorization', `Bearer ${args.apiKey}`);
  const deadline = new Date(Date.now() + args.deadlineS * 1000);
  const call = client.Generate(
      {
        text: args.prompt,
        max_tokens: args.maxTokens,
        sampling: {temperature: args.temperature, seed: String(args.seed)},
      },
      metadata, {deadline});

  let text = '';
  let finishReason = null;
  let completionTokens = 0;
  call.on('data', (response) => {
    text += response.text;
    if (!args.json) process.stdout.write(response.text);
    if (response.finish_reason !== 'FINISH_REASON_UNSPECIFIED') {
      finishReason = response.finish_reason;
      completionTokens = response.usage ? response.usage.completion_tokens : 0;
    }
  });
  call.on('error', (e) => {
    console.error(`\nstory.js: ${grpc.status[e.code]}: ${e.details}`);
    process.exitCode = 1;
  });
  call.on('end', () => {
    if (args.json) {
      console.log(JSON.stringify(
          {text, finish_reason: finishReason, completion_tokens: completionTokens}));
    } else {
      process.stdout.write('\n');
    }
    client.close();
  });
}

main();
