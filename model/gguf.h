// Placeholder until the GGUF reader lands.
#ifndef SHARDSERVE_MODEL_GGUF_H_
#define SHARDSERVE_MODEL_GGUF_H_
#endif  // SHARDSERVE_MODEL_GGUF_H_
